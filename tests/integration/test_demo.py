"""`make demo`, shortened (a few pre-training and J-BOND steps), so that every stage keeps working:
task building, conversion with tools/, J-BOND at TP=2 under torchrun, export and the transformers
check, the plot and the samples."""

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.distributed


def test_shortened_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "megatron_bond.demo", "--out", str(out), "--steps", "3",
                           "--pretrain-steps", "20"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "done in"):
        assert stage in done.stdout
    assert "its log-probs equal the Megatron policy's within" in done.stdout
    assert (out / "quantile_vs_kl.png").stat().st_size > 10_000
    assert (out / "hf_jbond" / "model.safetensors").is_file()
    evals = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals] == [0, 3]
    table = (out / "samples.md").read_text()
    assert table.count("\n|") >= 7 and "Colour words per 10 words" in table and "ended with EOS" in table
