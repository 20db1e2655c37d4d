"""Converted Gemma checkpoints score exactly like transformers at every TP/PP layout.

Tiny random HF models (MQA, MHA, GQA; Gemma 2 softcaps and sliding windows; Gemma 3 q/k norms, local
RoPE base and linear RoPE scaling; a Gemma 2 reward model), vocab 250 (padded to 256, split unevenly at
TP=2), sequences of 2, 5, 17 and 30 tokens (beyond the sliding window of 6), fp32. Converted with the
real tool, scored with the real `megatron-bond score` on gloo ranks.
"""

import pytest
import torch

from tests.harness import run_ranks

pytestmark = pytest.mark.distributed

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
CASES = [(v, layout) for v in ("gemma_mqa", "gemma2_gqa", "gemma3_gqa", "gemma2_reward") for layout in LAYOUTS]
CASES += [("gemma_mha", (1, 1)), ("gemma_mha", (2, 1))]
TOL = 1e-4


@pytest.mark.parametrize("variant, layout", CASES, ids=[f"{v}-tp{t}pp{p}" for v, (t, p) in CASES])
def test_score_matches_transformers(converted, variant, layout):
    root, _, rows, ref = converted(variant)
    tp, pp = layout
    out = run_ranks("tests.integration.bodies:score_checkpoint", tp * pp,
                    {"ckpt": str(root / "ckpt"), "tp": tp, "pp": pp, "rows": rows,
                     "out": str(root / f"out-{tp}-{pp}.jsonl")}, timeout=240)[0]
    assert len(out) == len(rows)
    if variant.endswith("reward"):
        err = max(abs(o["reward"] - r) for o, r in zip(out, ref))
    else:
        assert [len(o["logprobs"]) for o in out] == [len(r) - 1 for r in rows]
        err = max((torch.tensor(o["logprobs"]) - r).abs().max().item() for o, r in zip(out, ref))
    print(f"{variant} tp={tp} pp={pp}: max |Δ| = {err:.2e}")
    assert err < TOL
