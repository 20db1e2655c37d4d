"""Forward-only passes packed (runtime/tokens.py through models/forward.py) give each row what the
right-padded batch gives it: scoring's log-probs and a reward model's scores, at PP=2 (every pack of a
pass padded to one shape for the schedule's p2p) and TP=2.

Bound: the same sums in another order (tests/tolerances.py) over tiny_config's model, whose depths
(tests/distributed/bodies.py: 40 to a log-prob) gain Gemma 2's two post norms per layer: 48."""

import pytest

from megatron_bond.runtime.tokens import assign, document_lengths
from tests.distributed.bodies import TERMS
from tests.harness import run_ranks
from tests.tolerances import assert_reorder_close

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("tp, pp, reward", [(1, 2, True), (2, 1, False)], ids=["pp2_reward", "tp2_logprobs"])
def test_packed_rows_score_as_padded_rows(tp, pp, reward):
    ranks = run_ranks("tests.distributed.packing_bodies:padded_and_packed", tp * pp,
                      {"tp": tp, "pp": pp, "reward": reward, "budget": 24}, timeout=180)
    for out in ranks:  # every rank gets every row's values
        rows = out["rows"]
        assert [len(v) for v in out["packed"]] == [len(r) - (0 if reward else 1) for r in rows]
        for got, ref in zip(out["packed"], out["padded"]):
            assert_reorder_close(got, ref, TERMS, 48, "packed row")
    # Not vacuous: several packs, some holding several documents that must not see one another.
    packs = assign(document_lengths(ranks[0]["rows"], not reward), 24)
    assert len(packs) > 1 and max(map(len, packs)) > 1
