"""The evaluation's estimators (bond/estimates.py) against brute-force enumeration: of all N-subsets of
the k samples for the order statistics, and of every k-tuple of a finite reference distribution for
unbiasedness (the exact expectation then equals Theorem 1's, computed by bon_probs). Everything is
float64 sums of at most a few thousand terms of magnitude ≤ 1, so 1e-12 bounds their rounding."""

import itertools
import math

import numpy as np
import pytest
import torch

from megatron_bond.bond import bon_probs, exact_quantiles, kl
from megatron_bond.bond.estimates import (
    bon_quantile,
    bon_reward,
    curve_ns,
    empirical_bon_curve,
    kl_ratio_interval,
    mean_interval,
    mid_quantile,
    standard_error,
)

F64 = torch.float64
TIES = [2.0, 0.0, 1.0, 2.0, 5.0, 1.0, 2.0]  # k = 7, three-way and two-way ties


def brute_bon_reward(r, n):
    subsets = list(itertools.combinations(r, n))
    return sum(max(s) for s in subsets) / len(subsets)


def brute_bon_quantile(r, n):
    """Every held-out y'_i against every N-subset of the others: is r(y'_i) ≤ their best?"""
    hits = [r[i] <= max(s) for i in range(len(r)) for s in itertools.combinations(r[:i] + r[i + 1:], n)]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("rewards", [TIES, [0.3, -1.0, 2.0, 0.7, 0.1, 1.5]], ids=["ties", "distinct"])
def test_order_statistics_equal_enumeration_of_all_subsets(rewards):
    k = len(rewards)
    r = torch.tensor([rewards, rewards[::-1]], dtype=F64)  # the order of the samples must not matter
    for n in range(1, k + 1):
        assert bon_reward(r, n).tolist() == pytest.approx([brute_bon_reward(rewards, n)] * 2, abs=1e-12)
    for n in range(1, k):
        assert bon_quantile(r, n).tolist() == pytest.approx([brute_bon_quantile(rewards, n)] * 2, abs=1e-12)


def test_best_of_one_is_the_mean_and_both_grow_with_n():
    r = torch.tensor([TIES], dtype=F64)
    assert bon_reward(r, 1).item() == pytest.approx(sum(TIES) / len(TIES), abs=1e-12)
    rewards = [bon_reward(r, n).item() for n in range(1, 8)]
    quantiles = [bon_quantile(r, n).item() for n in range(1, 7)]
    assert rewards == sorted(rewards) and rewards[-1] == max(TIES)
    assert quantiles == sorted(quantiles) and quantiles[0] > 0.5  # ties lift the ≤ quantile above 0.5
    with pytest.raises(ValueError, match="N ≤ k − 1"):
        bon_quantile(r, 7)  # needs an independent y' besides the N
    with pytest.raises(ValueError, match="N ≤ k"):
        bon_reward(r, 8)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_estimators_are_unbiased_for_theorem_1(n):
    """Over all k-tuples of a 3-point reference distribution with ties, the estimators' exact mean is
    E[max reward of N] and E_{π_BoN}[p≤] of Theorem 1 (bon_probs), and the mid-rank quantile of a
    reference sample has mean 0.5."""
    probs, values, k = torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([1.0, 1.0, 3.0], dtype=F64), 4
    mean_reward = mean_quantile = mean_mid = 0.0
    for tup in itertools.product(range(3), repeat=k + 1):
        weight = math.prod(probs[i].item() for i in tup)
        r = values[list(tup[:k])].unsqueeze(0)
        mean_reward += weight * bon_reward(r, n).item()
        mean_quantile += weight * bon_quantile(r, n).item()
        mean_mid += weight * mid_quantile(values[[tup[k]]], r).item()
    bon = bon_probs(probs, values, n)
    p_le = exact_quantiles(probs, values)[0].squeeze(-1)
    assert mean_reward == pytest.approx((bon * values).sum().item(), abs=1e-12)
    assert mean_quantile == pytest.approx((bon * p_le).sum().item(), abs=1e-12)
    assert mean_mid == pytest.approx(0.5, abs=1e-12)


def test_empirical_curve_kl_is_theorem_1_on_the_k_atoms_and_its_quantile_unbiased():
    k, ns = 8, [1, 2, 4, 7]
    distinct = torch.arange(k, dtype=F64).unsqueeze(0)
    kls, qs = empirical_bon_curve(torch.cat([distinct, torch.ones(1, k, dtype=F64)]), ns)
    # k distinct atoms: the BoN of a uniform discrete law puts ((j/k)^N − ((j−1)/k)^N) on the j-th.
    j = torch.arange(1, k + 1, dtype=F64)
    for col, n in enumerate(ns):
        bon = (j / k) ** n - ((j - 1) / k) ** n
        assert kls[0, col].item() == pytest.approx(kl(bon, torch.full((k,), 1 / k, dtype=F64)).item(), abs=1e-12)
        # The quantile: sample i against every N-subset of the other k − 1, by enumeration.
        others = [[v for v in range(k) if v != i] for i in range(k)]
        hits = [sum(i <= max(c) for c in itertools.combinations(others[i], n)) / math.comb(k - 1, n) for i in range(k)]
        assert qs[0, col].item() == pytest.approx(sum(hits) / k, abs=1e-12)
    assert qs[0, 0].item() == pytest.approx(0.5, abs=1e-12)  # Best-of-1 is π_ref: 0.5, as quantile/ref
    assert kls[1].abs().max().item() < 1e-12 and qs[1].tolist() == pytest.approx([1.0] * 4, abs=1e-12)  # all tie
    assert max(curve_ns(16)) <= 15 and curve_ns(2) == (1,)


def test_the_curve_quantile_axis_is_unbiased_where_the_picked_sample_scored_against_its_own_set_is_not():
    """Over every 4-tuple of a 5-point law without ties (exact expectation): the curve's quantile at N = 2
    equals Theorem 1's Best-of-2 quantile; scoring the empirical Best-of-N's pick against the other
    samples of its own set (the curve before) comes out higher."""
    probs = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=F64)
    values = torch.arange(5, dtype=F64)
    k, n = 4, 2
    exact = (bon_probs(probs, values, n) * exact_quantiles(probs, values)[0].squeeze(-1)).sum().item()
    mean_q = mean_self = 0.0
    for idx in itertools.product(range(5), repeat=k):
        w = math.prod(probs[i].item() for i in idx)
        r = values[list(idx)].unsqueeze(0)
        mean_q += w * empirical_bon_curve(r, [n])[1].item()
        ref = torch.full_like(r, 1 / k)
        p_le_others = (k * exact_quantiles(ref, r)[0].squeeze(-1) - 1) / (k - 1)
        mean_self += w * (bon_probs(ref, r, n) * p_le_others).sum().item()
    assert mean_q == pytest.approx(exact, abs=1e-12)
    assert mean_self > exact + 0.01


def test_standard_error_and_the_bootstrap_interval():
    x = torch.tensor([0.1, 0.7, 0.4, 0.9], dtype=F64)
    assert standard_error(x) == pytest.approx(np.std(x.numpy(), ddof=1) / 2, abs=1e-15)
    assert math.isnan(standard_error(x[:1]))
    # Identical prompts: every resample is the same, the interval collapses on the point.
    kls, qs = empirical_bon_curve(torch.arange(8, dtype=F64).expand(5, 8), [1, 2, 4, 7])
    same = kl_ratio_interval(torch.full((5,), 0.7, dtype=F64), torch.full((5,), 0.5, dtype=F64), kls, qs)
    bon_kl = float(np.interp(0.7, qs[0].numpy(), kls[0].numpy()))
    assert same == pytest.approx((0.5 / bon_kl,) * 3, abs=1e-12)
    # Spread prompts: a proper interval around the point, reproducible from its fixed seed.
    q, kl_ref = torch.linspace(0.6, 0.8, 5, dtype=F64), torch.linspace(0.1, 0.9, 5, dtype=F64)
    point, lo, hi = kl_ratio_interval(q, kl_ref, kls, qs)
    assert lo < point < hi and (point, lo, hi) == kl_ratio_interval(q, kl_ref, kls, qs)
    # Below Best-of-1's quantile no N reaches it: undefined, not a number.
    assert math.isnan(kl_ratio_interval(torch.full((5,), 0.4, dtype=F64), kl_ref, kls, qs)[0])


@pytest.mark.parametrize("n, t", [(2, 12.706), (10, 2.262), (20, 2.093)])  # Student's t table, 0.975
def test_mean_interval_uses_the_t_quantile(n, t):
    x = np.r_[np.zeros(n - 1), 1.0]
    mean, lo, hi = mean_interval(x)
    assert mean == pytest.approx(1 / n) and (hi - mean) / (x.std(ddof=1) / math.sqrt(n)) == pytest.approx(t, abs=5e-4)
    assert mean - lo == pytest.approx(hi - mean)
