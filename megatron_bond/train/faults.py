"""Fault injection for the crash-consistency tests of checkpoints (tests/integration/test_resume.py)."""

from __future__ import annotations

import errno
import os

import torch

FAULT_ENV = "MEGATRON_BOND_FAULT"  # tests: "<step>:<point>" makes rank 0 die there (os._exit), see fault_point;
# "<step>:<point>:enospc" makes every rank's write fail there as on a full disk


def fault_point(step: int, point: str) -> None:
    """Fault injection for the crash-consistency tests: die like kill -9 of the job (this process and
    the checkpoint writers it started) at a named point of one save; or fail there as a full disk does."""
    if os.environ.get(FAULT_ENV) == f"{step}:{point}:enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if os.environ.get(FAULT_ENV) == f"{step}:{point}" and torch.distributed.get_rank() == 0:
        import psutil

        for child in psutil.Process().children(recursive=True):
            child.kill()
        os._exit(137)
