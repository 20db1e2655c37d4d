"""Uneven pipeline stages: Gemma's layer counts (18, 26, 42, 46, 62) rarely split evenly over the PP a
size needs. Tiny Gemma 2 and 3 and a reward model with 3 and 5 layers score like transformers at PP=2
with stages of 2+1 and 3+2 layers (and TP=2×PP=2), greedy generation crosses an uneven boundary as
transformers generates, and a checkpoint saved at uneven PP=2 loads at TP=2 and PP=1 and exports back
bit for bit. Tolerance: the parity criterion of test_gemma_parity.py."""

import pytest

from tests.harness import run_ranks
from tests.integration.test_conversion import assert_same_weights
from tests.integration.conftest import export
from tests.integration.test_gemma_parity import TOL, max_error

pytestmark = pytest.mark.distributed

# The uneven split of each: the first stage's layers, or the last stage's (the first gets the rest).
VARIANTS = {"gemma2_3layers": {"first_stage_layers": 2}, "gemma3_5layers": {"last_stage_layers": 2},
            "gemma2_reward_3layers": {"first_stage_layers": 2}}


@pytest.mark.parametrize("tp", [1, 2], ids=["pp2", "tp2pp2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_uneven_stages_score_like_transformers(converted, variant, tp):
    root, _, rows, ref = converted(variant)
    (got,) = run_ranks("tests.integration.bodies:score_many", tp * 2,
                       {"ckpts": [str(root / "ckpt")], "tp": tp, "pp": 2, "rows": rows, "stages": VARIANTS[variant]},
                       timeout=300)[0]
    err = max_error(variant, got, ref)
    print(f"{variant} tp={tp} pp=2 {VARIANTS[variant]}: max |Δ| = {err:.2e}")
    assert err < TOL


def test_checkpoint_saved_at_uneven_pp_reshards_and_exports_bit_exact(converted, tmp_path):
    root, _, _, _ = converted("gemma3_5layers")
    run_ranks("tests.integration.bodies:resave_at_layout", 2,
              {"ckpt": str(root / "ckpt"), "tp": 1, "pp": 2, "out": str(tmp_path / "uneven"),
               "stages": {"first_stage_layers": 3}})
    for tp, name in ((2, "tp2"), (1, "tp1")):
        run_ranks("tests.integration.bodies:resave_at_layout", tp,
                  {"ckpt": str(tmp_path / "uneven"), "tp": tp, "pp": 1, "out": str(tmp_path / name)})
        done = export(tmp_path / name, tmp_path / f"{name}_hf")
        assert done.returncode == 0, done.stderr[-2000:]
        assert_same_weights(root / "hf", tmp_path / f"{name}_hf")


def test_greedy_generation_at_uneven_stages_equals_transformers(converted):
    """Rollouts cross the uneven stage boundary once per new token (KV caches per stage)."""
    from tests.integration.test_generate import LOGP_TOL, NEW, hf_greedy, prompts

    root, model, _, _ = converted("gemma3_5layers")
    (got,) = run_ranks("tests.integration.bodies:generate_many", 2,
                       {"ckpts": [str(root / "ckpt")], "tp": 1, "pp": 2, "prompts": prompts(), "max_new_tokens": NEW,
                        "sampling": {"greedy": True}, "stages": VARIANTS["gemma3_5layers"]}, timeout=300)[0]
    assert got["responses"] == [hf_greedy(model, p) for p in prompts()]
    assert max(max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(got["logprobs"], got["scored"])) < LOGP_TOL
