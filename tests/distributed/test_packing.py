"""Packing changes no number: one J-BOND step of a tiny Gemma 2 (attention softcap, post norms) with
train.packing=true, at TP=2 × PP=2 (sequence parallel) and at DP=2, against the same step right-padded at
TP=1: the same rewards and lengths, the loss, KL and gradients within the reordering bounds, the same
update. Scoring (the policy's and the anchor's log-probs) and training both run packed.

Bounds (tests/tolerances.py): a packed pass sums the same nonzero terms as the padded one in another
order (a padding position's weight and its gradients are exactly 0, a document sees only its own keys),
so the tiny recipe's TERMS and the Gemma 2 depths of test_trainer.py hold unchanged."""

import pytest

from tests.distributed.test_trainer import GEMMA2, assert_same_step, step_at

pytestmark = pytest.mark.distributed

# One sampler seed per pair of prompts: the samples do not depend on the data-parallel layout.
COMMON = (*GEMMA2, "rollout.batch_size=2")
PACKED = ("train.packing=true", "train.max_tokens_per_microbatch=256")


@pytest.mark.parametrize("tp, pp, dp, extra", [(2, 2, 1, ("parallel.sequence_parallel=true",)), (1, 1, 2, ())],
                         ids=["tp2pp2_sp", "dp2"])
def test_packed_step_matches_the_padded_step(tp, pp, dp, extra):
    ref = step_at(1, 1, 1, COMMON)
    got = step_at(tp, pp, dp, (*COMMON, *PACKED, *extra))
    assert_same_step(got, ref, loss_depth=26, grad_depth=53)
    # The tiny prompts' lengths vary: the padded layout computes padding, the packed one (almost) none.
    assert ref["row"]["train/padding_share"] > 0.05 > got["row"]["train/padding_share"]
