"""Run bad-input cases through the real entry points in one process, each with its own stderr.

A case is ("cli", argv) for `megatron-bond ARGV`, or ("hf_to_megatron" | "megatron_to_hf", src, out)
for the converters' functions (their CLI turns the same ConfigError into one line and exit 2, checked
once by a subprocess in test_refusals.py). Returns {name: (exit code, stderr, traceback or None)}; an
exception escaping the entry point is what a user would have seen as a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import traceback


def run_cases(cases: dict) -> dict:
    from megatron_bond.cli import main
    from megatron_bond.config import ConfigError
    from megatron_bond.convert.convert import hf_to_megatron, megatron_to_hf

    launch = {n: os.environ.pop(n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
              if n in os.environ}  # each case starts as a lone process with a port of its own
    out = {}
    for name, (kind, *args) in cases.items():
        err = io.StringIO()
        code, trace = None, None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                if kind == "cli":
                    code = main(args[0])
                else:
                    try:
                        {"hf_to_megatron": hf_to_megatron, "megatron_to_hf": megatron_to_hf}[kind](*args)
                        code = 0
                    except ConfigError as e:
                        print(f"tool: {e}", file=err)
                        code = 2
            except SystemExit as e:
                code = e.code
            except BaseException:
                trace = traceback.format_exc()
        out[name] = (code, err.getvalue(), trace)
    os.environ.update(launch)
    return out
