"""tools/plan_memory.py's answers at the ends of --gpu-memory-gb: inf was planned as "fits"; a GPU far
too small got only "rethink the layout", now the shortfall and the GPU size that would do."""

import subprocess
import sys


def _plan(gb: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/plan_memory.py", "recipes/jbond_gemma2_27b.yaml", "--nodes", "2",
                           "--gpus-per-node", "8", "--gpu-memory-gb", gb], capture_output=True, text=True, timeout=300)


def test_infinite_memory_is_refused():
    done = _plan("inf")
    assert done.returncode == 2 and "--gpu-memory-gb a finite number > 0 (got 2, 8, inf)" in done.stderr


def test_no_single_change_says_by_how_much_and_what_would_fit():
    done = _plan("2")
    assert done.returncode == 1
    verdict = done.stdout.splitlines()[-1]
    assert "no single change found: checkpoint_load needs" in verdict and "use GPUs of at least 97 GB" in verdict, verdict
