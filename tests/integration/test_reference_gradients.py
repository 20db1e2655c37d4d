"""The trainer's step against an independent reference: transformers' Gemma 2 (full logits, plain
autograd) differentiating megatron_bond.bond's own loss functions (jbond_loss; BOND's Jeffreys loss;
reinforce_loss) on the samples the trainer drew. The layout tests compare layouts with TP=1 only, so a
wiring bug that every layout shares (which sequence gets which coefficient, a sign, a missing term)
passes them; it fails here. The swap mutation (the policy's own sample trained with the forward
coefficient, the anchor's best with the backward one) is shown to fail it.

Criterion: the project's HF parity criterion (tests/integration/test_gemma_parity.py: 1e-4 on fp32
log-probs of size up to 10, measured ≤ 2.9e-6; transformers and megatron-core compute Gemma in different
fused forms, so no reordering bound is tight), applied to each tensor relative to its largest gradient
entry: |Δ| ≤ 1e-4 · max|g_ref|. Measured (CPU, fp32): at most 1.3e-6 (J-BOND), 2.5e-6 (BOND), 2.1e-6
(REINFORCE) of max|g_ref|; the swap mutation: 1.88.
"""

import pytest

from tests.harness import run_ranks

pytestmark = pytest.mark.distributed
REL = 1e-4


def _compare(converted, algorithm, swap=False):
    root = converted("gemma2_gqa")[0]
    (out,) = run_ranks("tests.integration.reference_bodies:step_against_transformers", 1,
                       {"ckpt": str(root / "ckpt"), "hf_dir": str(root / "hf"), "algorithm": algorithm, "swap": swap},
                       timeout=300)
    return {key: ((got - ref).abs().max().item(), ref.abs().max().item()) for key, (got, ref) in out.items()}


@pytest.mark.parametrize("algorithm", ["jbond", "bond", "reinforce"])
def test_the_step_gradient_equals_autograd_of_the_bond_loss_through_transformers(converted, algorithm):
    diffs = _compare(converted, algorithm)
    assert max(scale for _, scale in diffs.values()) > 1e-3  # the step trains something
    for key, (diff, scale) in diffs.items():
        assert diff <= REL * scale, f"{key}: |Δ| = {diff:.3e} against max|g| = {scale:.3e}"


def test_the_swapped_wiring_fails_it(converted):
    diffs = _compare(converted, "jbond", swap=True)
    assert any(diff > REL * scale for diff, scale in diffs.values())
    worst = max(diff / scale for diff, scale in diffs.values() if scale > 0)
    assert worst > 100 * REL, worst  # not a rounding matter
