"""The enumerable task's exact quantities (megatron_bond/bond/fronts.py, enumerable.py) against brute
force on tiny cases: the optimal front's reward at a given KL (a grid over the simplex), the Best-of-N
curve (every N-tuple of responses), the shortfall metric of the exact optimum (0), and the refusal to read
a curve beyond its ends."""

import itertools
import math

import numpy as np
import pytest
import torch

from megatron_bond.bond.enumerable import RESPONSES, Policy, Reward, all_prompts
from megatron_bond.bond.fronts import (
    bon_curve, envelope, interp_within, kl_ratio_to_bon, optimal_front, point, ref_quantiles, shortfall, tilted,
)
from megatron_bond.bond.simulator import SequenceProblem, bon_curve as sim_bon_curve, front_ratio

REF = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]], dtype=torch.float64).log()
R = torch.tensor([[0.1, 0.9, 0.4], [0.7, 0.2, 0.2]], dtype=torch.float64)  # the second prompt ties


def test_the_front_is_the_best_reward_at_its_kl_by_brute_force():
    """Two prompts of two responses each: every pair of policies on a 1/1000 grid; at each KL budget k the
    best mean reward of the pairs with mean KL ≤ k. Gibbs: none exceeds the front (exact, up to float
    rounding 1e-12); the grid's best comes within its resolution of it: moving one probability by
    1e-3 moves E[r] by ≤ 1e-3·|Δr| ≤ 1e-3 and the KL by ≤ 1e-3·max|log ratio| (< 0.01 here), which
    the front's slope λ = dE/dKL turns into at most 1e-3 of reward: 5e-3 covers both with room."""
    ref = torch.tensor([[0.7, 0.3], [0.4, 0.6]], dtype=torch.float64).log()
    r = torch.tensor([[0.0, 1.0], [0.8, 0.1]], dtype=torch.float64)
    kls, rewards = optimal_front(ref, r)
    grid = np.linspace(1e-6, 1 - 1e-6, 1001)
    per = []
    for i in range(2):
        p = np.stack([grid, 1 - grid], -1)
        q = ref[i].exp().numpy()
        per.append(((p * np.log(p / q)).sum(-1), (p * r[i].numpy()).sum(-1)))
    kl_pairs = (per[0][0][:, None] + per[1][0][None, :]) / 2
    r_pairs = (per[0][1][:, None] + per[1][1][None, :]) / 2
    for k in (0.01, 0.05, 0.1, 0.3, 0.6):
        front = interp_within(k, kls, rewards, "test")
        brute = r_pairs[kl_pairs <= k].max()
        assert brute <= front + 1e-9  # the front's chords lie below it, so interpolation errs low, never high
        assert brute >= front - 5e-3, (k, brute, front)


def test_best_of_n_curve_by_enumerating_every_n_tuple():
    """Each prompt's Best-of-N law by brute force: every N-tuple of π_ref's samples, weighted by its
    probability, keeps the first of its best responses (ties included, as Theorem 1 counts them)."""
    for n in (1, 2, 3, 4):
        dists = []
        for i in range(2):
            probs, law = REF[i].exp(), torch.zeros(3, dtype=torch.float64)
            for tup in itertools.product(range(3), repeat=n):
                best = max(tup, key=lambda y: (R[i, y].item(), -tup.index(y)))
                law[best] += math.prod(probs[y].item() for y in tup)
            dists.append(law)
        want = point(torch.stack(dists).log(), REF, R)
        got = bon_curve(REF, R, [n])
        for key in ("quantile", "reward", "kl_ref"):
            assert got[key][0] == pytest.approx(want[key], abs=1e-12), (n, key)


def test_reference_quantiles_by_counting():
    p_le, p_lt = ref_quantiles(REF, R)
    for i, y in itertools.product(range(2), range(3)):
        probs = REF[i].exp()
        assert p_le[i, y].item() == pytest.approx(sum(probs[j].item() for j in range(3) if R[i, j] <= R[i, y]), abs=1e-15)
        assert p_lt[i, y].item() == pytest.approx(sum(probs[j].item() for j in range(3) if R[i, j] < R[i, y]), abs=1e-15)


def test_the_shortfall_of_the_exact_optimum_is_zero():
    """A trajectory that runs along the front has shortfall 0: exactly on the front's own points (the
    same interpolation), and within the chords' curvature on a λ grid between them (the front is
    concave, so a chord lies below it by ≤ ⅛·max|E''|·ΔKL²: 1e-4 for this 400-point grid and range).
    A policy off the front (a mixture of π_ref and the front's end) has a shortfall well above 0, and an
    envelope of the front is the front."""
    kls, rewards = optimal_front(REF, R)
    grid = np.linspace(0.05, 0.6, 12)
    on_front = [{"kl_ref": float(k), "reward": float(r)} for k, r in zip(kls, rewards)]
    value, reached = shortfall(on_front, (kls, rewards), grid)
    assert reached == 1.0 and abs(value) < 1e-15  # two interpolations of the same points: rounding only
    between = [point(tilted(REF, R, lam), REF, R) for lam in np.geomspace(1e2, 1e-3, 157)]
    value, reached = shortfall(between, (kls, rewards), grid)
    assert reached == 1.0 and abs(value) < 1e-4
    end = tilted(REF, R, 1e-3).exp()
    mixed = [point((w * end + (1 - w) * REF.exp()).log(), REF, R) for w in np.linspace(0, 1, 200)]
    assert shortfall(mixed, (kls, rewards), grid)[0] > 1e-3  # ten times the chords' bound
    assert shortfall(envelope([on_front, mixed], grid), (kls, rewards), grid)[0] == pytest.approx(0.0, abs=1e-12)
    # A run that stops inside the range has no value (a partial range would mix the metric with it).
    assert math.isnan(shortfall(on_front[:50], (kls, rewards), grid)[0])


def test_curves_refuse_to_be_read_beyond_their_ends():
    """np.interp repeats a curve's last value beyond its end: the front ratio read past the Best-of-N
    curve's last N used that N's KL (a ratio too low). Now it is refused."""
    with pytest.raises(ValueError, match="outside the curve's range"):
        interp_within(1.5, np.array([0.0, 1.0]), np.array([0.0, 2.0]), "test")
    p = SequenceProblem.random(vocab=4, length=2, seed=0)
    curve = sim_bon_curve(p, max_n=4)  # ends at Best-of-3, below the grid's 0.97
    history = [{"quantile": q, "kl_ref": 3.0 * q} for q in np.linspace(0.5, 1.0, 50)]
    with pytest.raises(ValueError, match="outside the curve's range"):
        front_ratio(history, curve)
    bon = bon_curve(REF, R, [1, 2])
    with pytest.raises(ValueError, match="outside the curve's range"):
        kl_ratio_to_bon([{"quantile": q, "kl_ref": q} for q in np.linspace(0.5, 1, 20)], bon, [0.99])


def test_the_transformer_enumeration_is_its_sampling_law():
    """The prefix-tree enumeration gives a distribution per prompt (sums to 1 within float64 rounding of
    4,096 terms) equal to the chain rule of the full-sequence pass, and the reward table is continuous
    (no two responses of a prompt tie)."""
    torch.manual_seed(0)
    policy, prompts = Policy(), all_prompts()[[0, 77, 511]]
    with torch.no_grad():
        logp = policy.enumerate(prompts)
        assert logp.exp().sum(-1).sub(1).abs().max() < 1e-12
        pick = torch.tensor([0, 1000, 2222, 4095])
        for i in range(3):
            direct = policy.logp(prompts[i].expand(4, -1), RESPONSES[pick]).double()
            # float32 forward passes of different shapes: a few float32 ulps of |log π| ≈ 10.
            assert torch.allclose(logp[i, pick], direct, atol=1e-5)
    table = Reward.random(0).table(prompts)
    assert all(len(set(row.tolist())) == 4096 for row in table)
