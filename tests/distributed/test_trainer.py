"""The J-BOND trainer on real gloo ranks: one full step (rollouts, rewards, fused scoring, weights,
megatron-core schedule and Adam, EMA anchor) gives the same result at every TP / PP / DP layout, and
the anchor's EMA is fp32 under a bf16 policy.

Bounds: tests/tolerances.py, with the depths of the tiny recipe's model derived in train_bodies.py.
"""

import functools

import pytest
import torch

from tests.distributed.train_bodies import GRAD_DEPTH, LOSS_DEPTH, TERMS
from tests.harness import run_ranks
from tests.tolerances import U32, adam_first_step_bound, assert_reorder_close, max_abs, reorder_bound

pytestmark = pytest.mark.distributed

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
EXACT = ("reward/policy", "reward/anchor", "length/policy", "jbond/reward_j", "update_ok", "lr")


@functools.cache
def step_at(tp: int, pp: int, dp: int = 1, overrides: tuple = ()) -> dict:
    ranks = run_ranks("tests.distributed.train_bodies:one_step", tp * pp * dp,
                      {"tp": tp, "pp": pp, "overrides": list(overrides)}, timeout=240)
    for rank in ranks[1:]:  # every rank reports the same global step
        assert rank["row"]["loss"] == ranks[0]["row"]["loss"]
    return ranks[0]


def assert_same_step(got: dict, ref: dict, loss_depth: int = LOSS_DEPTH, grad_depth: int = GRAD_DEPTH) -> None:
    for key in EXACT:  # discrete, or functions of the sampled tokens only
        assert got["row"][key] == ref["row"][key], key
    assert_reorder_close(got["row"]["loss"], ref["row"]["loss"], TERMS, loss_depth, "loss")
    assert_reorder_close(got["row"]["kl/anchor"], ref["row"]["kl/anchor"], TERMS, loss_depth, "kl/anchor")
    for key, g in ref["grads"].items():
        assert_reorder_close(got["grads"][key], g, TERMS, grad_depth, key)
    # ‖g‖ before clipping: |‖a‖ − ‖b‖| ≤ ‖a − b‖ ≤ √P·max|Δg| (each entry within the gradient bound),
    # plus the rounding of a sum of P squares, relative P·u on ‖g‖², so P·u/2 on ‖g‖, in each run.
    n_params = sum(g.numel() for g in ref["grads"].values())
    norm_bound = (n_params**0.5 * max(reorder_bound(max_abs(g), TERMS, grad_depth) for g in ref["grads"].values())
                  + n_params * U32 * ref["row"]["grad_norm"])
    assert abs(got["row"]["grad_norm"] - ref["row"]["grad_norm"]) <= norm_bound, "grad_norm"
    for key, p in ref["after"].items():
        bound = adam_first_step_bound(ref["grads"][key], got["grads"][key], ref["lr"], ref["eps"], ref["before"][key])
        assert ((got["after"][key] - p).abs() <= bound).all(), key
        # anchor = θ_0 + η·(θ_1 − θ_0) in fp32: η times the policy's difference, plus two roundings of
        # the lerp (one per run, ≤ 2u of the anchor's magnitude each)
        anchor_bound = 0.02 * bound + 4 * U32 * ref["anchor"][key].abs()
        assert ((got["anchor"][key] - ref["anchor"][key]).abs() <= anchor_bound).all(), key


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp2pp2"])
def test_one_training_step_matches_tp1(layout):
    ref = step_at(1, 1)
    assert ref["row"]["update_ok"] and ref["row"]["grad_norm"] > 0
    assert any((ref["after"][k] - ref["before"][k]).abs().max() > 0 for k in ref["after"])
    assert_same_step(step_at(*LAYOUTS[layout]), ref)


def test_data_parallel_sums_like_one_big_microbatch():
    """The 1/B normalisation is defined once: DP=2 with 2 microbatches per rank (4 of its 8 sequences
    each) must equal DP=1 with one microbatch of the whole batch (8 prompts × 2 = 16 sequences).
    Clipping is off, so the gradients and ‖g‖ compared are the raw sums: dividing by the microbatch
    count (Megatron's default) or averaging over DP scales them by 1/2, far outside the bounds (checked
    by that mutation in forward_step). Sampling groups of 2 prompts keep the samples themselves
    independent of the layout (train/samples.py)."""
    common = ("rollout.batch_size=2", "optimizer.clip_grad=0")
    ref = step_at(1, 1, 1, common + ("parallel.micro_batch_size=16",))
    got = step_at(1, 1, 2, common + ("parallel.micro_batch_size=4",))
    assert ref["row"]["grad_norm"] > 0
    assert_same_step(got, ref)


def test_bf16_policy_keeps_an_fp32_anchor():
    """η = 0.02, 50 updates, a policy 1 % away: the closed form closes 1 − 0.98^50 = 63.6 % of the gap.
    The trainer's anchor state does, up to fp32 rounding (each of the 50 lerps rounds by u·|w|, i.e. by
    u/0.01 of a 1 % gap: at most 50·u/0.01 = 3e-4 of it), and its model's bf16 weights are each
    within one bf16 rounding of the closed form; the same EMA kept in bf16 does not move at all (each
    update is below half an ulp)."""
    (got,) = run_ranks("tests.distributed.train_bodies:bf16_anchor_tracks_fp32", 1, {}, timeout=240)
    assert got["closed_form"] == pytest.approx(1 - 0.98**50, abs=1e-3)
    assert got["fp32_anchor"] == pytest.approx(got["closed_form"], abs=50 * U32 / 0.01)
    assert got["max_ulps_from_closed_form"] <= 1.0
    assert got["bf16_ema"] < 0.01


@pytest.mark.parametrize("algorithm", [
    ("bond.algorithm=bond", "bond.n=4", "bond.k=4", "bond.anchor=swap", "bond.swap_every=1"),
    ("bond.algorithm=reinforce", "bond.beta_rl=0.1"),  # its anchor is fixed without being told
], ids=["bond", "reinforce"])
def test_bond_and_reinforce_steps_run(algorithm):
    """One step of each other algorithm at TP=2: it trains, reports its own terms, and its anchor is
    what the algorithm says (BOND swapped in the policy after the step; REINFORCE kept π_ref)."""
    got = step_at(2, 1, 1, algorithm)
    row = got["row"]
    assert row["update_ok"] and row["grad_norm"] > 0
    key = next(iter(got["after"]))
    if "bond.algorithm=bond" in algorithm:
        assert "backward/return" in row and row["reward/anchor"] is not None
        assert all(torch.equal(got["anchor"][k], got["after"][k]) for k in got["after"])  # swapped
    else:
        assert "reinforce/return" in row and row["reward/anchor"] is None
        assert torch.equal(got["anchor"][key], got["before"][key])  # fixed at π_ref


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_recompute_changes_nothing(mode):
    """parallel.recompute (what the memory planner suggests first) recomputes each layer in backward:
    the same step at TP=2 as TP=1 without it."""
    assert_same_step(step_at(2, 1, 1, (f"parallel.recompute={mode}",)), step_at(1, 1))


# The tiny recipe's sizes as a Gemma 2 (the plain GPT family's torch norms do not support sequence
# parallelism; Gemma's own norms do). Two post norms per layer add 2 chained sums to each of the 2
# layers: depths 22 + 4 = 26 to the loss, 53 back to the gradients.
GEMMA2 = ("model.family=gemma2", "model.post_norms=true", "model.zero_centered_norm=true", "model.scale_embeddings=true",
          "model.activation=gelu_tanh", "model.attn_logit_softcap=50.0", "model.final_logit_softcap=30.0")


def test_sequence_parallel_step_matches_tp1():
    """parallel.sequence_parallel at TP=2: norms and residuals on sequence shards in training, the
    fused head behind megatron-core's gather (whose backward reduce-scatters the hidden gradient, so the
    head must not all-reduce it as well: that would count it twice), rollouts and scoring without it."""
    ref = step_at(1, 1, 1, GEMMA2)
    got = step_at(2, 1, 1, (*GEMMA2, "parallel.sequence_parallel=true"))
    assert_same_step(got, ref, loss_depth=26, grad_depth=53)


@pytest.mark.parametrize("eval_size", [1, 3])
def test_evaluation_at_dp2_with_fewer_or_uneven_held_out_prompts(eval_size):
    """DP=2 with 1 held-out prompt (one replica has none) or 3 (shares 2 and 1): every rank joins the
    collectives, and the row is DP=1's. One sampler seed per prompt (rollout.batch_size=1), so both
    layouts draw the same samples; means over the same prompts in the same order: equal."""
    overrides = [f"data.eval_size={eval_size}", "rollout.batch_size=1"]
    ref = run_ranks("tests.distributed.train_bodies:evaluation", 1, {"overrides": overrides}, timeout=240)[0]
    got = run_ranks("tests.distributed.train_bodies:evaluation", 2, {"overrides": overrides}, timeout=240)
    # NaN (a standard error of one prompt, a KL ratio below Best-of-1) compares as the null it is written as.
    same = lambda r: {k: None if v != v else v for k, v in r.items() if k != "time/eval"}  # noqa: E731
    for row in got:
        assert same(row) == same(ref)
