"""LoRA checkpoints: they hold the adapters (policy and anchor) and no base tensor; a run killed with
kill -9 resumes to the same metrics.jsonl as one never interrupted (bit for bit on CPU, timings aside);
a resume with another adapter rank, or on another base (policy.ckpt), is refused in one line, even with
run.allow_changed."""

import json

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.harness import UNTIMED
from tests.integration.test_resume import kill_all, rows, start, train, wait_for_step

pytestmark = pytest.mark.distributed

LORA = ["model.lora.rank=4", "optimizer.lr=1e-2"]


def test_kill_9_then_resume_is_exact_and_checkpoints_hold_adapters_only(tmp_path):
    train(tmp_path / "ref", *LORA)
    reference = [UNTIMED(r) for r in rows(tmp_path / "ref")]
    keys = FileSystemReader(str(tmp_path / "ref" / "checkpoints" / "step_0000008" / "dist")).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith(("policy.", "anchor."))]
    assert weights and all(".lora_" in k for k in weights)
    out = tmp_path / "killed"
    proc = start(out, *LORA)
    wait_for_step(proc, out, 5)
    kill_all(proc)
    assert "resuming from" in train(out, *LORA).stdout
    assert [UNTIMED(r) for r in rows(out)] == reference


def test_another_rank_is_refused_on_resume(tmp_path):
    train(tmp_path, *LORA, "train.steps=2")
    done = train(tmp_path, *LORA, "model.lora.rank=8", "run.allow_changed=[model.lora.rank]", check=False)
    assert done.returncode == 2 and "model.lora.rank: 4 -> 8 changed since the run started" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
