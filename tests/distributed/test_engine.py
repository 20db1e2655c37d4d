"""The rollout engine boundary (rollout/engine.py) with the native engine, at TP=1 and TP=2: a rollout of
weights other than the current ones is refused, each refit changes what the engine draws, and the
mismatch telemetry of a step compares the sampler's log-probs with the trainer's."""

import pytest

from tests.harness import run_ranks
from tests.integration.test_generate import LOGP_TOL

pytestmark = pytest.mark.distributed


def _moved(a: list[float], b: list[float]) -> float:
    """The largest change of the log-probs of the same draws (fixed seeds; where the tokens differ the
    lists differ in length or by O(1))."""
    if len(a) != len(b):
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("tp", [1, 2])
def test_versions_refits_and_the_mismatch_telemetry(tp):
    out = run_ranks("tests.distributed.train_bodies:engine_refits", tp, {"tp": tp}, timeout=240)
    for got in out:
        # Drawn before the update, used after it (policy, anchor), and an engine that missed the refit
        # (the step released it: it holds no weights).
        assert got["stale"] == [True, True, True] and not got["fresh_refused"]
        # lr 1e-3 moves the policy (log-probs change by far more than rounding); η = 0.02 of that moves
        # the anchor less but still; π_ref is the initial policy: its draws are the policy's before the
        # step (same seeds), to the sampler's rounding.
        assert _moved(got["before"], got["after"]) > 100 * LOGP_TOL
        assert _moved(got["anchor_before"], got["anchor_after"]) > 10 * LOGP_TOL
        assert got["same_tokens"] and _moved(got["before"], got["reference"]) < LOGP_TOL
        assert _moved(got["reference"], got["anchor_after"]) > 10 * LOGP_TOL
        row = got["row"]
        # The sampler's full-logit log-probs against the fused head's for the same tokens: the bound of
        # test_generate.py per token, so also for their mean (engine_kl) and the k3 estimate (≈ d²/2).
        assert 0 < row["rollout/engine_max_abs_logprob_diff"] < LOGP_TOL
        assert abs(row["rollout/engine_kl"]) < LOGP_TOL and 0 <= row["rollout/engine_kl_k3"] < LOGP_TOL**2
        assert row["time/refit"] == 0.0 and row["time/rollout_policy"] > 0 and row["time/rollout_anchor"] > 0
        assert row["rollout/tokens_per_s"] > 0
        # Ragged prompts and rows that stop early: some padding, never all of it.
        assert 0 < row["rollout/padding_share"] < 1 and 0 < row["train/padding_share"] < 1
        assert all(row[f"time/{k}"] > 0 for k in ("reward", "logprobs", "update", "anchor_update"))
        assert row["time/reward"] + row["time/logprobs"] <= row["time/score"]
    # Both TP ranks report the same mismatch (the replica's sampler and scorer agree across its ranks).
    keys = ("rollout/engine_kl", "rollout/engine_kl_k3", "rollout/engine_max_abs_logprob_diff")
    assert len({tuple(got["row"][k] for k in keys) for got in out}) == 1
