"""Run a test body on N real gloo ranks (one process each, torchrun's variables) with a hard timeout.

Parent side: ``run_ranks("tests.distributed.bodies:fn", world_size=4, kwargs={...})`` returns each rank's
return value (``torch.save``-able). A failing rank's traceback, or a hang, fails the test with every
rank's output tail.
Child side: ``python -m tests.harness MODULE:FUNC KWARGS_FILE OUT_DIR`` (started by the parent).
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(target: str, world_size: int, kwargs: dict | None = None, timeout: float = 180.0,
              env: dict[str, str] | None = None, python: str | None = None) -> list:
    """``python``: the ranks' interpreter (default: this one; the vLLM tests use .venv-vllm's)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="mbond-ranks-") as tmp:
        tmp = Path(tmp)
        (tmp / "kwargs.pkl").write_bytes(pickle.dumps(kwargs or {}))
        port = str(_free_port())
        procs, logs = [], []
        for rank in range(world_size):
            child_env = {
                **os.environ,
                "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                "PYTHONWARNINGS": "ignore",  # keep the output tail for tracebacks
                **(env or {}),
            }
            log = open(tmp / f"rank{rank}.log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen(
                [python or sys.executable, "-m", "tests.harness", target, str(tmp / "kwargs.pkl"), str(tmp)],
                cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        deadline = time.monotonic() + timeout
        timed_out = False
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if time.monotonic() > deadline or failed:
                timed_out = not failed
                time.sleep(0.0 if timed_out else 2.0)  # let the other ranks print their side
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
        codes = [p.returncode for p in procs]
        if timed_out or any(codes):
            report = []
            for rank, log in enumerate(logs):
                log.seek(0)
                tail = log.read()[-4000:]
                report.append(f"--- rank {rank} (exit {codes[rank]}) ---\n{tail}")
            why = f"timed out after {timeout:.0f}s" if timed_out else f"exit codes {codes}"
            raise AssertionError(f"{target} on {world_size} ranks: {why}\n" + "\n".join(report))
        return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _child(target: str, kwargs_file: str, out_dir: str) -> int:
    import torch

    module, func = target.split(":")
    kwargs = pickle.loads(Path(kwargs_file).read_bytes())
    try:
        result = getattr(importlib.import_module(module), func)(**kwargs)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    torch.save(result, Path(out_dir) / f"rank{os.environ['RANK']}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))


def UNTIMED(row: dict) -> dict:  # noqa: N802 (a row filter used like a constant)
    """A metrics row without what depends on the machine's speed: the times and the throughputs."""
    return {k: v for k, v in row.items() if not k.startswith("time/") and not k.endswith("tokens_per_s")}
