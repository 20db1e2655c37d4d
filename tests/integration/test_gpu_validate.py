"""tests/gpu/validate.sh (the prepared GPU validation) runs on a CPU machine with --tiny shapes: every stage
leaves a verdict, the JSON lines parse, the CPU-checkable part (stage 1's local-spec fp32 parity through a
converted checkpoint, on random Gemma 2 and Gemma 3 with softcaps and windows) passes, and nothing absent
(CUDA, Transformer Engine, vLLM) is reported as passed."""

import json
import subprocess
import sys

from tests.harness import ROOT


def test_validate_script_runs_its_cpu_part_and_never_passes_what_is_absent(tmp_path):
    script = ROOT / "tests" / "gpu" / "validate.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [f"stage {i}" for i in range(5)]
    assert all("not validated" in line for line in summary)  # no CUDA here: nothing GPU-side "passed"
    rows = [json.loads(line) for line in (tmp_path / "out" / "validate.jsonl").read_text().splitlines()]
    parity = [r for r in rows if r["stage"] == 1 and "family" in r]
    assert {r["family"] for r in parity} == {"gemma2", "gemma3"} and all(r["pass"] for r in parity), parity
    assert all(r["impl"] == "local" for r in parity)
    (verdict,) = [r for r in rows if r["stage"] == 1 and "verdict" in r]
    assert verdict["te"].startswith("not validated") and "parity passed" in verdict["verdict"]
    (versions,) = [r for r in rows if r["stage"] == 0]
    assert versions["versions"]["megatron-core"] == versions["verified"]["megatron-core"] == "0.16.1"
