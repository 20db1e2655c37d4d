"""Best-of-N theory (BOND, Sessa et al. 2024, section 3): the exact distribution and its quantiles."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def quantiles(rewards: Tensor, ref_rewards: Tensor) -> tuple[Tensor, Tensor]:
    """Monte-Carlo p̂≤ and p̂< of each reward against k reference rewards (last dim of ``ref_rewards``).

    ``rewards`` [...], ``ref_rewards`` [..., k] -> (p̂≤, p̂<), each [...], unbiased for p≤ and p<.
    """
    r = rewards.unsqueeze(-1)
    p_le = (ref_rewards <= r).to(torch.float32).mean(-1)
    p_lt = (ref_rewards < r).to(torch.float32).mean(-1)
    return p_le, p_lt


def log_quantile_reward(rewards: Tensor, ref_rewards: Tensor, n: int) -> Tensor:
    """The backward-KL reward (N−1)·log p̂≤(y).

    Guard against log 0: y itself counts as one more reference sample, so
    p̂≤ = (1 + #{i: r(y_i) ≤ r(y)}) / (k + 1) lies in [1/(k+1), 1]. This is the estimate one gets by
    adding y to the pool; it is biased upwards by at most 1/(k+1) and exact as k grows.
    """
    k = ref_rewards.shape[-1]
    count = (ref_rewards <= rewards.unsqueeze(-1)).to(torch.float32).sum(-1)
    return (n - 1) * torch.log((count + 1.0) / (k + 1.0))


def exact_quantiles(ref_probs: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
    """p≤(y) and p<(y) under π_ref on a finite support (last dim)."""
    le = (rewards.unsqueeze(-2) <= rewards.unsqueeze(-1)).to(ref_probs.dtype)  # [y, y']: r(y') ≤ r(y)
    lt = (rewards.unsqueeze(-2) < rewards.unsqueeze(-1)).to(ref_probs.dtype)
    return le @ ref_probs.unsqueeze(-1), lt @ ref_probs.unsqueeze(-1)


def bon_probs(ref_probs: Tensor, rewards: Tensor, n: int) -> Tensor:
    """Exact π_BoN over a finite support (Theorem 1, ties included; the first best sample wins).

    π_BoN(y) = π_ref(y) · p≤(y)^(N−1) · Σ_{i=1..N} (p<(y)/p≤(y))^(i−1)
             = π_ref(y) · Σ_{i=1..N} p<(y)^(i−1) · p≤(y)^(N−i)   (the form used: no division by 0).
    """
    p_le, p_lt = (q.squeeze(-1) for q in exact_quantiles(ref_probs, rewards))
    total = torch.zeros_like(ref_probs)
    for i in range(1, n + 1):
        total = total + p_lt ** (i - 1) * p_le ** (n - i)
    return ref_probs * total


def bon_kl_upper_bound(n: int) -> float:
    """KL(π_BoN ‖ π_ref) ≤ log n − (n−1)/n, with equality for continuous rewards."""
    return math.log(n) - (n - 1) / n


def bon_expected_quantile(n: int) -> float:
    """E_{π_BoN}[p≤] = n/(n+1): under Best-of-n the reference quantile is Beta(n, 1)."""
    return n / (n + 1)


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p ‖ q) over the last dim of two distributions on one finite support (0·log 0 = 0)."""
    p_log_p = torch.where(p > 0, p * (p.clamp_min(1e-38).log() - q.clamp_min(1e-38).log()), 0.0)
    return p_log_p.sum(-1)


def jeffreys(p: Tensor, q: Tensor, beta: float) -> Tensor:
    """J^β(p ‖ q) = (1−β)·KL(q ‖ p) + β·KL(p ‖ q): β weights the backward (mode-seeking) side."""
    return (1 - beta) * kl(q, p) + beta * kl(p, q)
