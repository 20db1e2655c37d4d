"""On a GPU (megatron-core on CUDA, one rank, NCCL): the paths CPU CI cannot build. Run on a lent
H100/H200 by tests/gpu/device_checks.sh; its output is kept in docs/results/.

- converted checkpoints score like transformers in fp32 on CUDA (local spec; TF32 is off by default in
  torch, so the fp32 criterion of tests/integration/test_gemma_parity.py applies unchanged);
- the trainer's CUDA defaults: bf16 parameters with fp32 main weights in megatron-core's distributed
  optimizer, the anchor's fp32 EMA kept on its shards, checkpoints and a resume.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT, run_ranks
from tests.integration.test_gemma_parity import TOL, max_error

pytestmark = pytest.mark.gpu

VARIANTS = ["gemma_mqa", "gemma2_gqa", "gemma3_multimodal", "gemma2_reward"]
U32 = 2.0**-24


def test_cuda_scores_like_transformers(converted):
    items = [converted(v) for v in VARIANTS]
    rows = items[0][2]
    got = run_ranks("tests.integration.bodies:score_many", 1,
                    {"ckpts": [str(item[0] / "ckpt") for item in items], "tp": 1, "pp": 1, "rows": rows},
                    timeout=300)[0]
    for variant, item, g in zip(VARIANTS, items, got):
        err = max_error(variant, g, item[3])
        print(f"{variant} on CUDA: max |Δ| = {err:.2e}")
        assert err < TOL, variant


def test_bf16_training_keeps_an_fp32_anchor_on_optimizer_shards():
    """As tests/distributed/test_trainer.py's bf16 anchor test, but through megatron-core's real
    distributed optimizer (CUDA only): η = 0.02, 50 updates, masters moved 1 %; the shadow closes
    1 − 0.98^50 of the gap up to 50 fp32 lerp roundings (50·u/0.01 of a 1 % gap), the bf16 weights stay
    within one bf16 rounding of the closed form."""
    (got,) = run_ranks("tests.integration.cuda_bodies:bf16_trainer_steps_and_sharded_anchor", 1, {}, timeout=300)
    print(json.dumps(got))
    assert got["dtype"] == "bfloat16" and "torch.bfloat16" in got["param_dtypes"]
    assert "DistributedOptimizer" in got["inner"] and got["sharded"]
    assert got["shadow_dtypes"] == ["torch.float32"]
    assert got["finite"] and all(r["update_ok"] for r in got["rows"])
    assert got["fp32_anchor"] == pytest.approx(got["closed_form"], abs=50 * U32 / 0.01)
    assert got["max_ulps_from_closed_form"] <= 1.0


def _train(out, steps, *extra):
    cmd = [sys.executable, "-m", "megatron_bond.cli", "train", "recipes/tiny_cpu.yaml", f"run.output_dir={out}",
           f"train.steps={steps}", "train.eval_every=10", "checkpoint.every=10", "logging.wandb_mode=disabled",
           "logging.progress=false", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_trains_in_bf16_checkpoints_and_resumes(tmp_path):
    """`megatron-bond train` on its tiny recipe on CUDA: bf16 by default, checkpoints with the distributed
    optimizer's sharded state, and a second start resumes from step 20 and carries on to 30."""
    out = tmp_path / "run"
    first = _train(out, 20)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(out, 30)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and "at step 20" in second.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if not r.get("eval")]
    assert steps == list(range(1, 31))
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rows if not r.get("eval"))
    evals = [r for r in rows if r.get("eval")]
    assert [r["step"] for r in evals][-1] == 30 and all(0 <= r["quantile/ref"] <= 1 for r in evals)
    assert "params_dtype: bfloat16" in (out / "config.yaml").read_text()
    print(json.dumps(evals[-1]))
