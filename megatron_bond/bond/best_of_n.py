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


def log_bon_ratio(p_le: Tensor, p_lt: Tensor, n: int) -> Tensor:
    """log π_BoN(y)/π_ref(y) = log Σ_{i=1..N} p<(y)^(i−1) · p≤(y)^(N−i)  (Theorem 1, ties included).

    = (N−1)·log p≤ + log B with B = Σ_i (p</p≤)^(i−1), written without the division; it equals
    log N + (N−1)·log p≤ where nothing ties (p< = p≤). Computed in log space (large N, small p), with
    0·log 0 = 0 so that p< = 0 is allowed.
    """
    i = torch.arange(n, dtype=p_le.dtype, device=p_le.device)  # i − 1 in Theorem 1's sum
    log_lt, log_le = torch.log(p_lt).unsqueeze(-1), torch.log(p_le).unsqueeze(-1)
    j = n - 1 - i
    terms = torch.where(i == 0, 0.0, i * log_lt) + torch.where(j == 0, 0.0, j * log_le)
    return torch.logsumexp(terms, dim=-1)


def log_quantile_reward(rewards: Tensor, ref_rewards: Tensor, n: int) -> Tensor:
    """The backward-KL reward: the Monte-Carlo estimate of log π_BoN(y)/π_ref(y) from k reference
    rewards (last dim of ``ref_rewards``), ties included (``log_bon_ratio``).

    Dropping log B is right only for continuous rewards: with a binary reward (P(good) = 0.3, N = 4)
    the objective would settle at P(good) = 0.555 instead of Best-of-4's 0.760.
    Guard against log 0: y itself counts as one more reference sample, on both sides, so
    p̂≤ = (1 + #{r(y_i) ≤ r(y)}) / (k + 1) and p̂< = (1 + #{r(y_i) < r(y)}) / (k + 1) lie in [1/(k+1), 1]
    and are equal where nothing ties (B = N, as for continuous rewards). It is a biased estimate of
    log π_BoN/π_ref, not an unbiased one: the log of a noisy quantile (Jensen) and the add-one shift
    lift it most where p is small (2.17 nats at p = 0.1, k = 16, N = 8; 0.21 at p = 0.5:
    test_best_of_n.py), and it is consistent only as k grows.
    """
    k = ref_rewards.shape[-1]
    r = rewards.unsqueeze(-1)
    count_le = (ref_rewards <= r).to(torch.float64).sum(-1)
    count_lt = (ref_rewards < r).to(torch.float64).sum(-1)
    return log_bon_ratio((count_le + 1.0) / (k + 1.0), (count_lt + 1.0) / (k + 1.0), n).to(torch.float32)


def exact_quantiles(ref_probs: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
    """p≤(y) and p<(y) under π_ref on a finite support (last dim)."""
    le = (rewards.unsqueeze(-2) <= rewards.unsqueeze(-1)).to(ref_probs.dtype)  # [y, y']: r(y') ≤ r(y)
    lt = (rewards.unsqueeze(-2) < rewards.unsqueeze(-1)).to(ref_probs.dtype)
    return le @ ref_probs.unsqueeze(-1), lt @ ref_probs.unsqueeze(-1)


def bon_probs(ref_probs: Tensor, rewards: Tensor, n: int) -> Tensor:
    """Exact π_BoN over a finite support (Theorem 1, ties included; the first best sample wins):
    π_ref(y) · exp(log_bon_ratio(p≤(y), p<(y), N))."""
    p_le, p_lt = (q.squeeze(-1) for q in exact_quantiles(ref_probs, rewards))
    return ref_probs * torch.exp(log_bon_ratio(p_le, p_lt, n))


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
