"""The shared command line of tools/convert_*.py: two directories, --overwrite, one-line errors."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from megatron_bond.config import ConfigError


def _interrupt(signum, frame):
    """Ctrl-C during a save: stop the checkpoint writer processes first (the main process waits on
    them and would not return), then unwind, which removes the partial output."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    raise KeyboardInterrupt


def tool_parser(name: str, doc: str, src_flag: str, options: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """``options``: optional path flags of this tool (flag -> help), passed to ``convert`` as keywords."""
    p = argparse.ArgumentParser(prog=name, description=doc.split("\n")[0])
    p.add_argument(src_flag, required=True, dest="src", help="the directory to convert (read only, never modified)")
    p.add_argument("--out-dir", required=True, help="the directory to write (appears only when complete)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir (never an input)")
    for flag, help in (options or {}).items():
        p.add_argument(flag, help=help)
    return p


def run_tool(doc: str, src_flag: str, convert: Callable, options: dict[str, str] | None = None) -> int:
    name = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
    args = tool_parser(name, doc, src_flag, options).parse_args()
    extra = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_")) for flag in options or {}}
    signal.signal(signal.SIGINT, _interrupt)
    try:
        cfg = convert(args.src, args.out_dir, args.overwrite, **extra)
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing was written to {args.out_dir}", file=sys.stderr)
        return 130
    print(f"wrote {args.out_dir} ({cfg.model.family}, {cfg.model.num_layers} layers)")
    return 0
