"""benchmarks/step_breakdown.py on the tiny recipe: one line per step and a median line, with every
phase's seconds inside the step's and the padding shares in [0, 1)."""

import json
import subprocess
import sys

from tests.harness import ROOT


def test_two_tiny_steps_break_down(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/step_breakdown.py", "--steps", "2", "--out", str(tmp_path / "b.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [line.get("step") for line in lines] == [1, 2, None] and lines[-1]["steps"] == 1
    for line in lines:
        parts = sum(line[k] for k in ("rollout_policy_s", "rollout_anchor_s", "refit_s", "reward_s", "scoring_s",
                                      "train_s", "ema_s"))
        assert 0 < parts <= line["step_s"] and 0 < line["rollout_share"] < 1
        assert 0 <= line["rollout_padding_share"] < 1 and 0 <= line["train_padding_share"] < 1
        assert line["rollout_tokens_per_s"] > 0
