"""Write an output directory all or nothing: into a hidden sibling, renamed into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from megatron_bond.config import ConfigError


def check_disjoint(out_dir: str | Path, inputs: tuple[str | Path, ...]) -> None:
    """Refuse an output that is, contains or lies inside an input: replacing it (``--overwrite``)
    would delete what the command reads. Paths are compared after resolving symlinks."""
    out = Path(out_dir).resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src or src in out.parents or out in src.parents:
            raise ConfigError(f"--out-dir {out_dir} overlaps the input {inp}: write the output to a "
                              "directory outside the input (and the input outside the output)")


@contextlib.contextmanager
def staged_output(out_dir: str | Path, overwrite: bool, inputs: tuple[str | Path, ...] = ()):
    check_disjoint(out_dir, inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # --overwrite replaces directories only, never a user's file
        raise ConfigError(f"--out-dir {out_dir} is a file, not a directory: choose another path")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"--out-dir {out_dir}: cannot write there ({err.strerror})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
