"""What a run leaves besides metrics.jsonl: each evaluation's samples, TensorBoard events with every
metric, and progress lines in a log file; on CPU no CUDA memory keys."""

import json
import re

import pytest

from tests.integration.test_resume import rows, train


def test_samples_tensorboard_and_the_progress_bar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    done = train(out, "logging.tensorboard=true", "logging.progress=true", "logging.wandb_mode=offline")
    metrics = rows(out)
    evals = [r for r in metrics if r.get("eval")]
    assert [r["step"] for r in evals] == [0, 4, 8]
    for r in evals:
        samples = [json.loads(line) for line in (out / "samples" / f"step-{r['step']}.jsonl").read_text().splitlines()]
        assert len(samples) == 4  # data.eval_size
        assert set(samples[0]) == {"prompt", "response", "reward", "quantile", "quantile_mid", "kl_ref", "reward_ref",
                                   "rewards_ref"}  # no tokenizer: no text
        assert all(len(s["rewards_ref"]) == 2 for s in samples)  # train.eval_ref_samples
        assert sum(s["quantile"] for s in samples) / 4 == r["quantile/ref"]
        assert sum(s["reward"] for s in samples) / 4 == r["reward/policy"]
        # The measured Best-of-N baseline of the k = 2 reference samples (unit-tested in test_bon_estimates.py).
        ref = [s["rewards_ref"] for s in samples]
        assert r["bon/reward@1"] == pytest.approx(r["reward/ref"], abs=1e-12)
        assert r["bon/reward@2"] == pytest.approx(sum(max(x) for x in ref) / 4, abs=1e-12)
        assert r["bon/reward@2"] >= r["bon/reward@1"]
        assert r["bon/quantile@1"] == pytest.approx(sum(a <= b for x in ref for a, b in (x, x[::-1])) / 8, abs=1e-12)
        assert 0 <= r["quantile/ref_mid"] <= r["quantile/ref"] and r["quantile/ref_se"] >= 0 and r["kl/ref_se"] >= 0
        assert {"kl/ratio_to_bon", "kl/ratio_to_bon_lo", "kl/ratio_to_bon_hi", "bon/kl@1", "bon/kl@2"} <= set(r)
    tables = sorted((out / "wandb").rglob("samples_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["prompt", "response", "reward", "quantile", "quantile_mid", "kl_ref", "reward_ref",
                                "rewards_ref"] and len(table["data"]) == 4
    assert not any(k.startswith("mem/") for r in metrics for k in r)  # CUDA only

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = [r for r in metrics if not r.get("eval")]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    # TensorBoard stores float32: the value rounded once, within 2^-24 relative.
    assert all(abs(e.value - r["loss"]) <= 2**-24 * abs(r["loss"]) + 1e-30 for e, r in zip(loss, steps))
    assert [e.step for e in events.Scalars("eval/quantile/ref")] == [0, 4, 8]
    assert {"reward/policy", "kl/anchor", "time/rollout", "eval/kl/ref"} <= set(events.Tags()["scalars"])

    # No terminal (the test captures stdout): lines, not a bar; the resolved config first, each evaluation
    # and every logging.log_every-th step (default 10; here the last) on its own line (tests/unit/test_metrics_log.py: the bar).
    lines = done.stdout.splitlines()
    (config,) = [line for line in lines if line.startswith("resolved config: ")]
    assert json.loads(config.removeprefix("resolved config: "))["logging"]["progress"] is True
    assert [line.split(":")[0] for line in lines if line.startswith("eval step")] == ["eval step 0", "eval step 4", "eval step 8"]
    assert [line for line in lines if re.match(r"step 8/8: loss \S+, reward \S+, kl_anchor \S+ \| rollout \d+\.\d\ds "
                                                r"score \d+\.\d\ds train \d+\.\d\ds$", line)], lines
    assert "\r" not in done.stdout + done.stderr
