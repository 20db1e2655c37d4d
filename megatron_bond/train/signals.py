"""Stopping on Slurm's signals and Ctrl-C: every rank agrees at the end of a step, checkpoints and exits 0."""

from __future__ import annotations

import contextlib
import os
import signal

import torch


class StopSignal:
    """SIGTERM and SIGUSR1 (Slurm's warning before preemption or the time limit, `scancel --signal=USR1`)
    and SIGINT (Ctrl-C) only set a flag; at the end of each step every rank joins one all-reduce (MAX), so
    all ranks agree to checkpoint and stop even when only one of them received the signal. A second
    Ctrl-C exits at once, without a checkpoint (``latest`` still names a complete one)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @classmethod
    @contextlib.contextmanager
    def deferred(cls):
        """Block the stop signals for the duration: Slurm signals every process of a job step, and the
        helper processes started here (dist_checkpointing's writers) inherit the blocked mask across fork
        and exec, so they never act on them; this process gets them, pending, when the block ends."""
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, cls.SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            os.write(2, b"second Ctrl-C: exiting now, without a checkpoint\n")
            os._exit(130)
        if signum == signal.SIGINT:  # os.write: the handler may interrupt a print to the same stream
            os.write(2, b"Ctrl-C: checkpointing at the end of this step, then stopping (Ctrl-C again: exit now)\n")
        self.received = signum

    def agreed(self) -> bool:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([0 if self.received is None else 1], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
