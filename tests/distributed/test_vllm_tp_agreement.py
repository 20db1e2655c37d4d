"""Each TP rank runs its own vLLM worker on the same requests; if their tokens ever differed, the ranks
would train on different widths and the next TP collective would hang or mix data. The engine returns
the first TP rank's rollout on every rank of the group (issue 35, point 3)."""

import pytest

from tests.harness import run_ranks

pytestmark = pytest.mark.distributed


def test_tp_ranks_that_disagree_get_the_first_ranks_rollout():
    prompts = [[5, 6, 7], [8, 9]]
    got = run_ranks("tests.distributed.vllm_stub_bodies:disagreeing_tp_ranks", 2, {"prompts": prompts, "n": 2},
                    timeout=120)
    assert got[0] == got[1]
    assert got[0]["responses"] == [[[7, 7]] * 2] * 2  # TP rank 0's tokens
    assert got[0]["logprobs"] == [[[-0.5, -0.5]] * 2] * 2
    assert got[0]["computed"] == 2 * (3 + 2) + 8  # prompts twice (n = 2) and the agreed responses
