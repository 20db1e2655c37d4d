"""Vocab-parallel sampling (rollout/sampling.py) at TP=2 draws the same tokens as at TP=1 from the same
logits, from the softmax (chi-square), at temperature 1 and 0.7, with top-k over the shards and top-p
(gathered); the padded vocabulary is never drawn."""

import pytest
import torch

from megatron_bond.rollout.sampling import SamplingParams, filtered_logits
from tests.harness import run_ranks
from tests.unit.test_sampling import chi_square_critical

pytestmark = pytest.mark.distributed

ROWS, VOCAB, WIDTH = 40000, 19, 20  # 19 real tokens, one padded id on the second shard


@pytest.mark.parametrize("params", [
    {"temperature": 1.0}, {"temperature": 0.7}, {"temperature": 0.7, "top_k": 6}, {"temperature": 1.0, "top_p": 0.8},
    {"greedy": True},
], ids=["T1", "T0.7", "top_k", "top_p", "greedy"])
def test_tp2_draws_equal_tp1_and_follow_the_softmax(params):
    out = run_ranks("tests.distributed.rollout_bodies:draws", 2,
                    {"params": params, "rows": ROWS, "vocab_size": VOCAB, "width": WIDTH, "seed": 11}, timeout=120)
    whole_tokens, whole_logp = out[0]["whole"]
    for got in out:
        tokens, logp = got["split"]
        assert torch.equal(tokens, whole_tokens)  # same draws at TP=1 and TP=2, on both ranks
        # The log-normaliser from two shards' (max, Σ exp) instead of one: fp64 sums of ≤ 20 terms of
        # fp32 logits, so the difference is fp32 rounding of the returned value (≤ 2⁻²⁴ relative).
        torch.testing.assert_close(logp, whole_logp, rtol=1e-6, atol=1e-6)
    p = SamplingParams(**params)
    logits = out[0]["logits"][:VOCAB]
    torch.testing.assert_close(whole_logp, torch.log_softmax(logits, -1)[whole_tokens])  # raw: before T
    counts = torch.bincount(whole_tokens, minlength=WIDTH).double()
    assert counts[VOCAB:].sum() == 0, "a padded id was drawn"
    if p.greedy:
        assert torch.all(whole_tokens == logits.argmax())
        return
    expected = torch.softmax(filtered_logits(logits.unsqueeze(0), p), -1).squeeze(0).double()
    support = expected > 0
    assert counts[:VOCAB][~support].sum() == 0, "a filtered-out token was drawn"
    exp_counts = expected[support] * ROWS
    stat = ((counts[:VOCAB][support] - exp_counts) ** 2 / exp_counts).sum().item()
    assert stat < chi_square_critical(int(support.sum()) - 1), stat
