"""Best-of-N theory against brute-force enumeration and the paper's closed forms."""

import itertools
import math

import pytest
import torch

from megatron_bond.bond import (
    bon_expected_quantile,
    bon_kl_upper_bound,
    bon_probs,
    exact_quantiles,
    kl,
    log_bon_ratio,
    log_quantile_reward,
    quantiles,
)

F64 = torch.float64


def brute_force_bon(ref_probs, rewards, n):
    """Enumerate every N-tuple of reference samples; the first sample with the highest reward wins."""
    out = torch.zeros_like(ref_probs)
    for tup in itertools.product(range(len(ref_probs)), repeat=n):
        prob = math.prod(ref_probs[i].item() for i in tup)
        best = max(range(n), key=lambda j: (rewards[tup[j]].item(), -j))
        out[tup[best]] += prob
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("rewards", [[0.3, -1.0, 2.0, 0.7], [1.0, 0.0, 1.0, 0.0]], ids=["distinct", "ties"])
def test_bon_probs_equals_enumeration(n, rewards):
    ref = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=F64)
    r = torch.tensor(rewards, dtype=F64)
    expected = brute_force_bon(ref, r, n)
    got = bon_probs(ref, r, n)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_paper_bandit_example():
    got = bon_probs(torch.tensor([0.5, 0.3, 0.2], dtype=F64), torch.tensor([0.0, 1.0, 2.0], dtype=F64), 2)
    torch.testing.assert_close(got, torch.tensor([0.25, 0.39, 0.36], dtype=F64))


def test_bon_probs_broadcasts_over_leading_dims():
    ref = torch.softmax(torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(0)), -1)
    r = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    batched = bon_probs(ref, r, 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], bon_probs(ref[i], r[i], 4))


def test_quantile_estimates_are_unbiased():
    gen = torch.Generator().manual_seed(0)
    ref = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=F64)
    r = torch.tensor([1.0, 0.0, 1.0, 2.0], dtype=F64)  # with a tie
    p_le, p_lt = (q.squeeze(-1) for q in exact_quantiles(ref, r))
    draws, k = 20000, 4
    samples = torch.multinomial(ref, draws * k, replacement=True, generator=gen).view(draws, k)
    # Every support point y against the same `draws` independent pools of k reference rewards.
    est_le, est_lt = quantiles(r.unsqueeze(-1).expand(4, draws), r[samples].expand(4, draws, k))
    # Mean over draws vs the exact quantile: 5 standard errors of a mean of k Bernoulli trials.
    se = torch.sqrt(p_le * (1 - p_le) / (draws * k)).clamp_min(1e-3)
    assert ((est_le.mean(-1) - p_le).abs() < 5 * se).all()
    se = torch.sqrt(p_lt * (1 - p_lt) / (draws * k)).clamp_min(1e-3)
    assert ((est_lt.mean(-1) - p_lt).abs() < 5 * se).all()


def test_log_quantile_reward_never_takes_log_zero():
    """y counts as one more reference sample on both sides: p̂≤ = p̂< ∈ [1/(k+1), 1] without ties, so
    the reward is log N + (N−1)·log p̂≤ (Theorem 1 with B = N)."""
    ref_rewards = torch.tensor([[1.0, 2.0, 3.0]])
    worst = log_quantile_reward(torch.tensor([0.0]), ref_rewards, n=4)
    best = log_quantile_reward(torch.tensor([5.0]), ref_rewards, n=4)
    assert worst.item() == pytest.approx(math.log(4) + 3 * math.log(1 / 4))
    assert best.item() == pytest.approx(math.log(4))


def test_log_quantile_reward_with_ties_is_the_estimated_bon_ratio():
    """With ties the estimate is Theorem 1's log Σ_i p̂<^(i−1) p̂≤^(N−i), not (N−1)·log p̂≤ + log N:
    y = 1 against [0, 1, 1, 2] has p̂≤ = (1+3)/5 and p̂< = (1+1)/5."""
    got = log_quantile_reward(torch.tensor([1.0]), torch.tensor([[0.0, 1.0, 1.0, 2.0]]), n=3)
    le, lt = 4 / 5, 2 / 5
    assert got.item() == pytest.approx(math.log(le**2 + lt * le + lt**2), rel=1e-6)


def test_log_quantile_reward_is_biased_where_p_is_small():
    """The add-one estimate is not unbiased for log π_BoN/π_ref: with j ~ Binomial(k, p) reference samples
    below y, E[(N−1)·log((1+j)/(k+1))] − (N−1)·log p is 2.17 nats at p = 0.1, k = 16, N = 8 (the log of
    a noisy ratio, Jensen, plus the add-one shift), 0.21 at p = 0.5; a larger k shrinks it. Exact: the
    expectation is a sum over j of the estimator itself, weighted by the binomial law."""
    def bias(p, k, n):
        total = 0.0
        for j in range(k + 1):
            ref = torch.tensor([[0.0] * j + [2.0] * (k - j)])  # j below r(y) = 1, k − j above
            total += math.comb(k, j) * p**j * (1 - p) ** (k - j) * log_quantile_reward(torch.tensor([1.0]), ref, n).item()
        return total - (math.log(n) + (n - 1) * math.log(p))

    # float32 output (the estimator's dtype): 1e-6 relative on |values| ≤ 20 nats.
    assert bias(0.1, 16, 8) == pytest.approx(2.1729, abs=1e-3)
    assert bias(0.5, 16, 8) == pytest.approx(0.2125, abs=1e-3)
    assert bias(0.1, 256, 8) < 0.3 < bias(0.1, 16, 8)


def test_log_bon_ratio_is_log_n_plus_n_minus_1_log_p_without_ties():
    p = torch.tensor([0.01, 0.5, 1.0], dtype=F64)
    for n in (1, 2, 7, 300):  # large N stays finite in log space
        torch.testing.assert_close(log_bon_ratio(p, p, n), math.log(n) + (n - 1) * p.log(), rtol=1e-12, atol=1e-12)


def fine_problem(size=4000, seed=0):
    """Many atoms of small mass: close to continuous rewards."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.softmax(0.5 * torch.randn(size, dtype=F64, generator=gen), -1)
    return ref, torch.randn(size, dtype=F64, generator=gen)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_kl_bound_and_quantile_laws(n):
    ref, r = fine_problem()
    bon = bon_probs(ref, r, n)
    p_le = exact_quantiles(ref, r)[0].squeeze(-1)
    assert kl(bon, ref).item() <= bon_kl_upper_bound(n) + 1e-12
    assert kl(bon, ref).item() == pytest.approx(bon_kl_upper_bound(n), abs=0.01)
    assert (bon * p_le).sum().item() == pytest.approx(bon_expected_quantile(n), abs=0.01)
    assert (bon * p_le.log()).sum().item() == pytest.approx(-1 / n, abs=0.01)


def test_kl_bound_holds_with_coarse_support_and_ties():
    ref = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=F64)
    r = torch.tensor([0.0, 1.0, 1.0, 3.0], dtype=F64)
    for n in range(1, 9):
        assert kl(bon_probs(ref, r, n), ref).item() <= bon_kl_upper_bound(n) + 1e-12
