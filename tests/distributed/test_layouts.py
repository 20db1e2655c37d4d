"""Real megatron-core TP / PP on gloo ranks: the same loss, gradients, optimizer step and checkpoint at
every layout, from one layout-invariant initialisation.

Tolerances follow from fp32 arithmetic (tests/tolerances.py): layouts reorder sums, so values may move
by depth·terms·u·scale; TERMS, LOSS_DEPTH and GRAD_DEPTH of the test model are derived in
tests/distributed/bodies.py. The bounds come to 3e-4 of the loss and 6e-4 of each gradient tensor's
largest entry: far above fp32 noise on any CPU (measured: about 1e-7 relative), far below what a layout
bug does (a missing tied-embedding all-reduce at PP=2 changes the embedding gradient by O(1) of its
scale).
"""

import pytest
import torch

from tests.distributed.bodies import ADAM_EPS, GRAD_DEPTH, LOSS_DEPTH, LR, TERMS, WEIGHT_DECAY
from tests.harness import run_ranks
from tests.tolerances import U32, adam_first_step_bound, assert_reorder_close, reorder_bound

pytestmark = pytest.mark.distributed

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
CLIP = 0.5


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "tp2"
    out = {}
    for name, (tp, pp) in LAYOUTS.items():
        kwargs = {"tp": tp, "pp": pp, "save_dir": str(ckpt) if name == "tp2" else None}
        out[name] = run_ranks("tests.distributed.bodies:train_step", tp * pp, kwargs, timeout=180)
    return out, ckpt


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp2pp2"])
def test_loss_and_grads_match_tp1(steps, layout):
    ref, got = steps[0]["tp1"][0], steps[0][layout]
    for rank in got:  # every rank sees the same global values
        assert_reorder_close(rank["loss"], ref["loss"], TERMS, LOSS_DEPTH, "loss")
        assert rank["grads"].keys() == ref["grads"].keys()
        for key, grad in ref["grads"].items():
            assert_reorder_close(rank["grads"][key], grad, TERMS, GRAD_DEPTH, key)
    assert any(g.abs().max() > 0 for g in ref["grads"].values())


def _clipped(grads: dict, norm: float) -> dict:
    """Megatron's clipping: g · clip / (‖g‖ + 1e-6) when that factor is below 1."""
    factor = min(1.0, CLIP / (norm + 1e-6))
    return {k: g * factor for k, g in grads.items()}


def adam_step_violations(ref: dict, got: dict) -> dict[str, float]:
    """Per tensor, the largest |Δ param| beyond what Adam's first step allows for the two measured
    gradients (tests/tolerances.adam_first_step_bound); empty when the steps agree."""
    g_ref, g_got = _clipped(ref["grads"], ref["grad_norm"]), _clipped(got["grads"], got["grad_norm"])
    out = {}
    for key, p_ref in ref["params"].items():
        bound = adam_first_step_bound(g_ref[key], g_got[key], LR, ADAM_EPS, ref["params_before"][key])
        excess = ((got["params"][key] - p_ref).abs() - bound).max().item()
        if excess > 0:
            out[key] = excess
    return out


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp2pp2"])
def test_adam_step_matches_tp1(steps, layout):
    ref, got = steps[0]["tp1"][0], steps[0][layout][0]
    assert ref["ok"] and got["ok"]
    assert ref["grad_norm"] > CLIP, "the test should exercise gradient clipping (clip_grad=0.5)"
    # |‖g‖ − ‖g'‖| ≤ ‖g − g'‖ (triangle inequality), plus the rounding of the two norms themselves
    # (a sum of n squares: n·u relative each).
    n = sum(g.numel() for g in ref["grads"].values())
    diff = torch.cat([(got["grads"][k] - g).flatten() for k, g in ref["grads"].items()]).norm().item()
    assert abs(got["grad_norm"] - ref["grad_norm"]) <= diff + 2 * n * U32 * ref["grad_norm"]
    assert adam_step_violations(ref, got) == {}
    # The loss after the step: first order, |ΔL| ≤ Σ |∂L/∂p|·|Δp| (twice, for curvature), plus the
    # reordering of the forward pass itself.
    dp = sum((ref["grads"][k].abs() * (got["params"][k] - p).abs()).sum().item() for k, p in ref["params"].items())
    assert abs(got["loss_after"] - ref["loss_after"]) <= 2 * dp + reorder_bound(ref["loss_after"], TERMS, LOSS_DEPTH)
    assert ref["loss_after"] < ref["loss"]


def test_adam_bound_catches_layout_bugs(steps):
    """The comparison above fails for the bugs it exists to catch: an optimizer step applied twice to
    one tensor-parallel shard (two ranks updating one slice), or an update computed from the wrong
    rows' gradient (a shard offset bug) while the gradients themselves are right."""
    ref = steps[0]["tp1"][0]
    key = next(k for k in ref["params"] if "linear_qkv.weight" in k)
    half = ref["params"][key].shape[0] // 2
    twice = {**ref, "params": dict(ref["params"])}
    step = ref["params"][key] - ref["params_before"][key]
    twice["params"][key] = ref["params"][key].clone()
    twice["params"][key][:half] += step[:half]
    assert key in adam_step_violations(ref, twice)
    g = _clipped(ref["grads"], ref["grad_norm"])[key]

    def stepped(grad):  # AdamW's first step, as the bound models it
        p0 = ref["params_before"][key]
        return {**ref, "params": {**ref["params"], key: p0 * (1 - LR * WEIGHT_DECAY) - LR * grad / (grad.abs() + ADAM_EPS)}}

    assert adam_step_violations(ref, stepped(g)) == {}  # the model of the step is Megatron's step
    assert key in adam_step_violations(ref, stepped(g.roll(1, dims=0)))


@pytest.mark.parametrize("tp,pp", [(1, 2), (1, 1), (2, 2)])
def test_tp2_checkpoint_loads_at_other_layouts(steps, tp, pp):
    saved, ckpt = steps[0]["tp2"][0], steps[1]
    loaded = run_ranks("tests.distributed.bodies:load_and_eval", tp * pp,
                       {"tp": tp, "pp": pp, "ckpt_dir": str(ckpt)}, timeout=180)
    for rank in loaded:
        for key, p in saved["params"].items():
            assert torch.equal(rank["params"][key], p), key  # resharding moves bits, it computes nothing
        assert_reorder_close(rank["loss"], saved["loss_after"], TERMS, LOSS_DEPTH, "loss after reload")


def test_world_not_divisible_by_layout():
    (message, _, _) = run_ranks("tests.distributed.bodies:expect_setup_error", 3, {"tp": 2, "pp": 1})
    assert "world size 3 is not divisible by tp*pp=2*1=2" in message


def test_hang_fails_fast():
    with pytest.raises(AssertionError, match="timed out"):
        run_ranks("tests.distributed.bodies:hang", 2, {}, timeout=5)


def test_rank_traceback_is_forwarded():
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_ranks("tests.distributed.bodies:fail_on_rank", 2, {"rank": 1}, timeout=60)
