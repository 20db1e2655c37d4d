"""Forward-only passes packed (runtime/tokens.py through models/forward.py) give each row what the
right-padded batch gives it: scoring's log-probs and a reward model's scores, at PP=2 (every pack of a
pass padded to one shape for the schedule's p2p), with sliding windows shorter than the rows,
Gemma 2's softcap and Gemma 3's local RoPE (its own base on the sliding layers, restarted per document).

Bound: the same sums in another order (tests/tolerances.py) over tiny_config's model (DEPTH below)."""

import pytest

from megatron_bond.runtime.tokens import assign, document_lengths
from tests.distributed.bodies import TERMS
from tests.harness import run_ranks
from tests.tolerances import assert_reorder_close

pytestmark = pytest.mark.distributed


# Depths to a log-prob: tiny_config's 40, plus 2 chained sums per layer for Gemma 2's post norms, 4 for
# Gemma 3's post and q/k norms.
DEPTH = {"gemma2": 48, "gemma3": 56}


# TP=2 scoring runs packed in test_packing.py's step; here the reward head under PP and Gemma 3.
@pytest.mark.parametrize("tp, pp, family, reward", [(1, 2, "gemma2", True), (1, 1, "gemma3", False)],
                         ids=["pp2_gemma2_reward", "gemma3_local_rope"])
def test_packed_rows_score_as_padded_rows(tp, pp, family, reward):
    ranks = run_ranks("tests.distributed.packing_bodies:padded_and_packed", tp * pp,
                      {"tp": tp, "pp": pp, "family": family, "reward": reward, "budget": 24}, timeout=180)
    for out in ranks:  # every rank gets every row's values
        rows = out["rows"]
        assert [len(v) for v in out["packed"]] == [len(r) - (0 if reward else 1) for r in rows]
        for got, ref in zip(out["packed"], out["padded"]):
            assert_reorder_close(got, ref, TERMS, DEPTH[family], "packed row")
    # Not vacuous: several packs, some holding several documents that must not see one another.
    packs = assign(document_lengths(ranks[0]["rows"], not reward), 24)
    assert len(packs) > 1 and max(map(len, packs)) > 1
