"""The shared command line of tools/convert_*.py: two directories, --overwrite, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from megatron_bond.config import ConfigError


def run_tool(doc: str, src_flag: str, convert: Callable) -> int:
    name = sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py")
    p = argparse.ArgumentParser(prog=name, description=doc.split("\n")[0])
    p.add_argument(src_flag, required=True, dest="src")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-dir")
    args = p.parse_args()
    try:
        cfg = convert(args.src, args.out_dir, args.overwrite)
    except ConfigError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir} ({cfg.model.family}, {cfg.model.num_layers} layers)")
    return 0
