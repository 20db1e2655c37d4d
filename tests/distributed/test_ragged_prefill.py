"""Prompts of different lengths prefilled in one left-padded pass (rollout/generate.py) through
megatron-core's own attention (the gpt family; Gemma's is checked against transformers in
tests/integration/test_generate.py): each row continues as its prompt does alone."""

import pytest

from tests.harness import run_ranks
from tests.integration.test_generate import LOGP_TOL

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("tp", [1, 2])
def test_a_left_padded_batch_continues_each_prompt_as_alone(tp):
    out = run_ranks("tests.distributed.rollout_bodies:ragged_greedy", tp,
                    {"tp": tp, "lengths": [3, 11, 6, 1], "max_new_tokens": 12}, timeout=180)
    for got in out:
        (batch, batch_logp), (alone, alone_logp) = got["batch"], got["alone"]
        assert batch == alone and all(len(r) == 12 for r in batch)
        # The same sums over fewer (unmasked) or more (masked, weight 0) keys: rounding only.
        assert max(abs(x - y) for a, b in zip(batch_logp, alone_logp) for x, y in zip(a, b)) < LOGP_TOL
    assert out[0]["batch"] == out[-1]["batch"]
