"""What an evaluation measures from samples, with its uncertainty: the measured Best-of-N baseline of
π_ref's k samples per prompt (order statistics over all N-subsets, not one subsample), the tie-aware
quantile, standard errors over prompts, a bootstrap interval, and the exact Best-of-N curve of the
empirical reference distribution (Theorem 1, ties included).

All inputs are per prompt: ``ref_rewards`` [P, k] (π_ref's k rewards of each prompt), the policy's
``rewards`` [P]. Sums run in float64: weights like C(j−1, N−1)/C(k, N) span many orders of magnitude.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .best_of_n import bon_probs, kl

BON_NS = (1, 2, 4, 8, 16)  # the N of bon/reward@N and bon/quantile@N (those ≤ k, resp. < k)


def _comb(n: Tensor, r: int) -> Tensor:
    """C(n, r) elementwise for integer-valued float64 n ≥ 0 (0 where n < r)."""
    out = torch.ones_like(n)
    for i in range(r):
        out = out * (n - i).clamp_min(0) / (i + 1)
    return out


def bon_reward(ref_rewards: Tensor, n: int) -> Tensor:
    """E[max reward of N samples of π_ref] per prompt, unbiased: the mean of the maximum over all
    N-subsets of the k samples, Σ_j r_(j)·C(j−1, N−1)/C(k, N) over the ascending order statistics
    (the j-th smallest is the maximum of C(j−1, N−1) subsets; ties need no care, equal values are
    interchangeable). N = 1 is the mean; non-decreasing in N. [P, k] -> [P]."""
    k = ref_rewards.shape[-1]
    if not 1 <= n <= k:
        raise ValueError(f"bon_reward needs 1 ≤ N ≤ k = {k}, got N = {n}")
    j = torch.arange(1, k + 1, dtype=torch.float64)
    weights = _comb(j - 1, n - 1) / math.comb(k, n)
    return (ref_rewards.double().sort(dim=-1).values * weights).sum(-1)


def bon_quantile(ref_rewards: Tensor, n: int) -> Tensor:
    """E_{y~Best-of-N(π_ref)}[p≤_ref(y)] per prompt, unbiased: P(r(y') ≤ max of N others) for an
    independent y' ~ π_ref, averaged over every choice of y' among the k samples and every N-subset
    of the other k − 1: mean_i [1 − C(m_i, N)/C(k−1, N)] with m_i = #{j ≠ i: r_j < r_i} (the subsets
    whose every member is strictly below y'_i). Comparable with quantile/ref (both ≤, against
    independent samples); needs N ≤ k − 1. [P, k] -> [P]."""
    k = ref_rewards.shape[-1]
    if not 1 <= n <= k - 1:
        raise ValueError(f"bon_quantile needs 1 ≤ N ≤ k − 1 = {k - 1}, got N = {n}")
    r = ref_rewards.double()
    below = (r.unsqueeze(-2) < r.unsqueeze(-1)).double().sum(-1)  # [P, k]: m_i (r_i itself is not < r_i)
    return (1.0 - _comb(below, n) / math.comb(k - 1, n)).mean(-1)


def mid_quantile(rewards: Tensor, ref_rewards: Tensor) -> Tensor:
    """The mid-rank (tie-aware) quantile P(r' < r) + ½·P(r' = r) per prompt: 0.5 in expectation at
    π = π_ref whatever ties the reward has, where the ≤ quantile starts above 0.5. [P], [P, k] -> [P]."""
    r, ref = rewards.double().unsqueeze(-1), ref_rewards.double()
    return (ref < r).double().mean(-1) + 0.5 * (ref == r).double().mean(-1)


def standard_error(values: Tensor) -> float:
    """The standard error of the mean over prompts (sample standard deviation / √P; NaN for P = 1,
    written as null: one prompt says nothing about the spread)."""
    p = values.numel()
    return (values.double().std() / math.sqrt(p)).item() if p > 1 else math.nan


def bon_kl(ref_rewards: Tensor, n: int) -> Tensor:
    """KL(π_BoN‖π_ref) of the empirical reference distribution (each prompt's k samples with weight
    1/k, ties included through Theorem 1's p≤ and p<), per prompt. With k atoms the KL is capped at
    log k, so it speaks for N ≤ k; for untied rewards it sits a little below log N − (N−1)/N.
    [P, k] -> [P]."""
    r = ref_rewards.double()
    ref = torch.full_like(r, 1.0 / r.shape[-1])
    return kl(bon_probs(ref, r, n), ref)


def empirical_bon_curve(ref_rewards: Tensor, ns) -> tuple[Tensor, Tensor]:
    """The task's Best-of-N curve from π_ref's k samples per prompt: per prompt and N, ``bon_kl`` and
    ``bon_quantile`` (unbiased: each sample against N others of the rest). Scoring the empirical
    Best-of-N's pick against the same k samples it was picked from would lift the curve (0.912 instead of
    0.889 at N = 8, k = 16). N ≤ k − 1 (``curve_ns``). [P, k] -> ([P, len(ns)], [P, len(ns)]); the task's
    curve is their mean over prompts."""
    if ref_rewards.shape[-1] < 2:
        raise ValueError("the empirical Best-of-N curve needs k ≥ 2 reference samples per prompt")
    return (torch.stack([bon_kl(ref_rewards, n) for n in ns], -1),
            torch.stack([bon_quantile(ref_rewards, n) for n in ns], -1))


CURVE_NS = tuple(sorted({round(1.15**i) for i in range(60)}))  # N = 1 … ≈ 4,400, denser at small N


def curve_ns(k: int) -> tuple[int, ...]:
    """The N of CURVE_NS that k reference samples per prompt can speak for (N ≤ k − 1: the quantile of a
    Best-of-N is counted against a sample outside the N)."""
    return tuple(n for n in CURVE_NS if n <= k - 1)


def bon_kl_at(quantile: float, curve_kl: np.ndarray, curve_q: np.ndarray) -> float:
    """KL of the curve's Best-of-N at this quantile (linear between its points); NaN outside the
    curve: below Best-of-1 no N reaches it, above the last point the curve is not drawn."""
    if not curve_q[0] <= quantile <= curve_q[-1]:
        return math.nan
    return float(np.interp(quantile, curve_q, curve_kl))


def kl_ratio_interval(quantile: Tensor, kl_ref: Tensor, curve_kl: Tensor, curve_q: Tensor, draws: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """KL(π‖π_ref) over the Best-of-N KL at the quantile reached, on the task's tie-aware curve, and its
    percentile-bootstrap interval over prompts (prompts resampled with replacement, each draw's curve
    the mean of its prompts' curves). Per prompt: ``quantile``, ``kl_ref`` [P], ``curve_*`` [P, len(ns)].
    Draws whose ratio is undefined (a quantile off the curve or a Best-of-N KL of 0) count as +inf, so
    they widen the upper end rather than vanish; the seed is fixed, so the interval is reproducible.
    Its scope: the evaluation's noise (which prompts, which samples), not the training run's."""
    def ratio(idx):
        q, kl = quantile[idx].mean().item(), kl_ref[idx].mean().item()
        bon = bon_kl_at(q, curve_kl[idx].mean(0).numpy(), curve_q[idx].mean(0).numpy())
        return kl / bon if bon > 0 else math.nan

    p = quantile.numel()
    point = ratio(torch.arange(p))
    gen = torch.Generator().manual_seed(seed)
    samples = np.array([ratio(torch.randint(p, (p,), generator=gen)) for _ in range(draws)])
    samples = np.where(np.isnan(samples), np.inf, samples)
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")  # no inf − inf
    return point, float(lo), float(hi)


def _t_cdf(x: float, df: int) -> float:
    """Student's t CDF for x ≥ 0: ½ + the density's integral over [0, x] (Simpson, 2,000 panels: the
    density is smooth, so the error is far below the 3 decimals an interval is quoted to)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    u = np.linspace(0.0, x, 4001)
    f = c * (1 + u**2 / df) ** (-(df + 1) / 2)
    return 0.5 + (x / 12000) * (f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of independent values (seeds) and its Student-t interval: mean ± t·s/√n."""
    x = np.asarray(values, dtype=np.float64)
    n, mean = x.size, float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan
    lo, hi = 0.0, 1000.0  # bisection for the t quantile (12.7 at n = 2)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, n - 1) < (1 + level) / 2 else (lo, mid)
    half = hi * x.std(ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half
