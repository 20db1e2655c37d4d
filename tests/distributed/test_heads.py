"""Fused log-prob heads under real TP / PP: vocab-parallel ops at TP=2, and the heads inside
Megatron's pipeline schedules (sequence log-probs and training-loss gradients equal TP=1)."""

import pytest

from tests.harness import run_ranks

pytestmark = pytest.mark.distributed

SOFTCAP = 30.0  # Gemma 2's final-logit softcap


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_vocab_parallel_ops_match_full_vocab_reference(backend):
    env = {"TRITON_INTERPRET": "1"} if backend == "triton" else {}
    for errors in run_ranks("tests.distributed.head_bodies:ops_at_tp2", 2, {"backend": backend}, env=env):
        assert max(errors.values()) < 1e-5, errors


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
    assert (ref["seq_logp"][:n] - ref["megatron_seq_logp"]).abs().max() < 1e-5


@pytest.mark.parametrize("layout", [(2, 1), (1, 2), (2, 2)], ids=["tp2", "pp2", "tp2pp2"])
def test_sequence_logprobs_and_loss_gradients_equal_tp1(layouts, layout):
    (ref,) = layouts[(1, 1)]
    assert (ref["seq_logp"] == 0).sum() == 1  # the fully masked sequence
    for rank in layouts[layout]:
        assert (rank["seq_logp"] - ref["seq_logp"]).abs().max() < 1e-5
        assert abs(rank["loss"] - ref["loss"]) < 1e-5
        assert rank["grads"].keys() == ref["grads"].keys()
        for key, grad in ref["grads"].items():
            assert (rank["grads"][key] - grad).abs().max() < 2e-6, key
    assert any(g.abs().max() > 1e-4 for g in ref["grads"].values())
