"""A non-finite gradient never reaches the weights, the anchor, the LR schedule or a checkpoint
(megatron-core applies any gradient in bf16/fp32: it checks only under an fp16 loss scale). Driven
through `megatron-bond train` with a reward function that returns 1e38 for one response on chosen calls:
REINFORCE's return is then ~1e38, its per-token weights ~1e37 and the gradient's fp32 norm overflows."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from megatron_bond.train.rewards import tiny_reward
from tests.harness import ROOT

pytestmark = pytest.mark.distributed

HUGE_CALLS = "MEGATRON_BOND_TEST_HUGE_CALLS"  # "a:b": calls a..b−1 of the reward (from 1) get one 1e38
ARGS = ["recipes/tiny_cpu.yaml", "bond.algorithm=reinforce", "train.steps=5", "train.global_batch_size=2",
        "parallel.micro_batch_size=2", "rollout.max_new_tokens=4", "data.num_prompts=16", "data.eval_size=2",
        "train.eval_ref_samples=2", "train.eval_every=0", "checkpoint.every=1", "checkpoint.keep_last=10",
        "optimizer.warmup_steps=10", "logging.wandb_mode=disabled", "logging.progress=false",
        "reward.function=tests.integration.test_numerics:huge_reward"]
_calls = 0


def huge_reward(prompts, responses):
    global _calls
    _calls += 1
    first, stop = map(int, os.environ[HUGE_CALLS].split(":"))
    rewards = tiny_reward(prompts, responses)
    if first <= _calls < stop:
        rewards[0] = 1e38
    return rewards


def _train(out, calls: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", HUGE_CALLS: calls}
    return subprocess.run([sys.executable, "-m", "megatron_bond.cli", "train", *ARGS, f"run.output_dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _rows(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if not r.get("eval")}


def _checkpoint(out, step: int, tmp):
    ckpt = out / "checkpoints" / f"step_{step:07d}"
    dcp_to_torch_save(ckpt / "dist", tmp / f"{step}.pt")  # torch's own reader: no process group, no Megatron
    tensors = torch.load(tmp / f"{step}.pt", weights_only=False)
    return tensors, json.loads((ckpt / "trainer.json").read_text())


def test_a_non_finite_gradient_changes_nothing_and_the_run_goes_on(tmp_path):
    # Calls 1 and 2 are the evaluation at step 0 (policy, reference); call 4 is step 2's rollout.
    done = _train(tmp_path / "run", "4:5")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "run")
    assert [rows[s]["update_ok"] for s in range(1, 6)] == [True, False, True, True, True]
    assert [rows[s]["skipped_steps"] for s in range(1, 6)] == [0, 1, 1, 1, 1]
    assert rows[2]["grad_norm"] is None  # non-finite: null in metrics.jsonl
    assert rows[2]["lr"] == rows[1]["lr"] and rows[3]["lr"] == 2 * rows[1]["lr"]  # warm-up counts applied updates
    before, trainer_before = _checkpoint(tmp_path / "run", 1, tmp_path)
    after, trainer_after = _checkpoint(tmp_path / "run", 2, tmp_path)
    assert trainer_after["scheduler"] == trainer_before["scheduler"]
    assert trainer_after["order"] != trainer_before["order"]  # the skipped step consumed its batch
    compared = [k for k, v in before.items() if isinstance(v, torch.Tensor) and k.startswith(("policy.", "anchor.", "optimizer."))]
    assert any(k.startswith("policy.") for k in compared) and any(k.startswith("anchor.") for k in compared)
    assert any(k.startswith("optimizer.") for k in compared)
    for key in compared:
        assert torch.equal(before[key], after[key]), key
        assert torch.isfinite(after[key]).all(), key
    later, _ = _checkpoint(tmp_path / "run", 3, tmp_path)
    assert not torch.equal(later["policy.embedding.word_embeddings.weight"], after["policy.embedding.word_embeddings.weight"])


def test_non_finite_updates_in_a_row_stop_the_run_without_a_checkpoint(tmp_path):
    done = _train(tmp_path / "run", "4:100")  # every step from step 2 on
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "step 4: 3 updates in a row had a non-finite gradient (train.max_skipped_steps=3)" in lines[0]
    rows = _rows(tmp_path / "run")
    assert max(rows) == 4 and rows[4]["skipped_steps"] == 3 and not rows[4]["update_ok"]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_0000003"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [f"step_000000{s}" for s in (1, 2, 3)]
