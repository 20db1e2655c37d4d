"""Fused log-prob heads under real TP / PP: vocab-parallel ops at TP=2, and the heads inside
Megatron's pipeline schedules (sequence log-probs and training-loss gradients equal TP=1).

Tolerances are reordering bounds (tests/tolerances.py). The bare ops (T = 11, H = 16, V = 128 in two
shards, chunks of 4) chain at most 3 sums of at most 128 terms (logits over H, the normaliser over V,
a gradient over V or T); the heads in the pipeline run tests/distributed/bodies.py's model, whose
depths are derived there.
"""

import pytest

from tests.distributed.bodies import GRAD_DEPTH, LOSS_DEPTH, TERMS
from tests.harness import run_ranks
from tests.tolerances import assert_reorder_close, reorder_bound

pytestmark = pytest.mark.distributed

SOFTCAP = 30.0  # Gemma 2's final-logit softcap


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("vocab", [120, 60], ids=["padded_tail", "all_padding_shard"])
def test_vocab_parallel_ops_match_full_vocab_reference(backend, vocab):
    """vocab 60 of 128 rows: the second shard (rows 64..127) is all padding. Its row max is −inf; the
    torch backend used to form exp(−inf − (−inf)) = NaN there and all-reduce it to every rank."""
    env = {"TRITON_INTERPRET": "1"} if backend == "triton" else {}
    for errors in run_ranks("tests.distributed.head_bodies:ops_at_tp2", 2, {"backend": backend, "vocab": vocab}, env=env):
        for case, quantities in errors.items():
            for name, (diff, scale) in quantities.items():
                assert diff <= reorder_bound(scale, terms=128, depth=3), (case, name, diff, scale)


@pytest.fixture(scope="module")
def layouts():
    return {
        (tp, pp): run_ranks("tests.distributed.head_bodies:heads_in_pipeline", tp * pp,
                            {"tp": tp, "pp": pp, "softcap": SOFTCAP}, timeout=180)
        for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]
    }


def test_scoring_head_equals_megatron_output_layer(layouts):
    (ref,) = layouts[(1, 1)]
    n = len(ref["megatron_seq_logp"])
    assert ref["seq_logp"][:n].abs().min() > 1.0  # response tokens were scored
    assert_reorder_close(ref["seq_logp"][:n], ref["megatron_seq_logp"], TERMS, LOSS_DEPTH, "seq logp")


@pytest.mark.parametrize("layout", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_sequence_logprobs_and_loss_gradients_equal_tp1(layouts, layout):
    (ref,) = layouts[(1, 1)]
    assert (ref["seq_logp"] == 0).sum() == 1  # the fully masked sequence
    for rank in layouts[layout]:
        assert_reorder_close(rank["seq_logp"], ref["seq_logp"], TERMS, LOSS_DEPTH, "seq logp")
        assert_reorder_close(rank["loss"], ref["loss"], TERMS, LOSS_DEPTH, "loss")
        assert rank["grads"].keys() == ref["grads"].keys()
        for key, grad in ref["grads"].items():
            assert_reorder_close(rank["grads"][key], grad, TERMS, GRAD_DEPTH, key)
    assert any(g.abs().max() > 1e-4 for g in ref["grads"].values())
