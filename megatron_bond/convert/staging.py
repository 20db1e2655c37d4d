"""Write an output directory all or nothing: into a hidden sibling, renamed into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from megatron_bond.config import ConfigError


@contextlib.contextmanager
def staged_output(out_dir: str | Path, overwrite: bool):
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
