"""BOND, J-BOND and REINFORCE loss terms on sequence log-probabilities.

Every term is Σ_i c_i · log π(y_i) with a stop-gradient coefficient c_i, which is what lets the training
head fuse the loss (see docs/bond.md). Inputs are tensors over the batch ([B]); log-probs of the policy
carry gradients, everything else is detached here. ``sample_weight`` (default: the batch mean, 1/B each)
turns a batch into an exact expectation when the batch is a whole finite support with its probabilities.
Each function returns ``(loss_to_minimise, metrics)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

JBOND_PENALTY = -math.log(16.0)


def _weights(like: Tensor, sample_weight: Tensor | None) -> Tensor:
    if sample_weight is None:
        return torch.full_like(like, 1.0 / like.numel())
    return sample_weight.detach().to(like.dtype)


def leave_one_out_baseline(returns: Tensor, dim: int = 0) -> Tensor:
    """Mean of the *other* returns along ``dim`` (0 when there is no other sample)."""
    n = returns.shape[dim]
    if n == 1:
        return torch.zeros_like(returns)
    return (returns.sum(dim, keepdim=True) - returns) / (n - 1)


def forward_kl_loss(logp_best: Tensor, sample_weight: Tensor | None = None) -> tuple[Tensor, dict]:
    """KL(π_BoN ‖ π) up to a constant: −E log π(y_best), SFT on the best of N anchor samples."""
    w = _weights(logp_best, sample_weight)
    loss = -(w * logp_best).sum()
    return loss, {"forward/nll_best": loss.detach()}


def policy_gradient_loss(
    logp: Tensor, returns: Tensor, baseline: Tensor, sample_weight: Tensor | None = None
) -> Tensor:
    """REINFORCE surrogate −E[sg(R − b) · log π(y)]."""
    w = _weights(logp, sample_weight)
    advantage = (returns - baseline).detach()
    return -(w * advantage * logp).sum()


def backward_kl_loss(
    logp: Tensor,
    logp_ref: Tensor,
    log_quantile_reward: Tensor,
    baseline: Tensor | None = None,
    sample_weight: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """KL(π ‖ π_BoN) by REINFORCE with return R = (N−1)·log p̂≤(y) − (log π(y) − log π_ref(y)).

    ``log_quantile_reward`` is (N−1)·log p̂≤ (``best_of_n.log_quantile_reward``); ``baseline`` defaults
    to the leave-one-out mean of R over the batch.
    """
    returns = (log_quantile_reward - (logp - logp_ref)).detach()
    if baseline is None:
        baseline = leave_one_out_baseline(returns)
    loss = policy_gradient_loss(logp, returns, baseline, sample_weight)
    metrics = {"backward/return": returns.mean(), "backward/kl_ref": (logp - logp_ref).detach().mean()}
    return loss, metrics


def jeffreys_loss(forward: Tensor, backward: Tensor, beta: float) -> Tensor:
    """J^β = (1−β)·forward + β·backward: β weights the backward (RL) side."""
    return (1.0 - beta) * forward + beta * backward


def jbond_reward(r_policy: Tensor, r_anchor: Tensor) -> Tensor:
    """r_J(y) = −log 16 where r(y) < min(r(y'_1), r(y'_2)) strictly, else 0. ``r_anchor``: [B, 2]."""
    worse = r_policy < r_anchor.min(dim=-1).values
    return torch.where(worse, JBOND_PENALTY, 0.0).to(torch.float32)


def kl_regulariser_loss(
    logp: Tensor, logp_anchor: Tensor, sample_weight: Tensor | None = None
) -> Tensor:
    """L_Reg = sg(log π − log π_anchor) · log π: its gradient is the score-function estimate of
    ∇KL(π ‖ π_anchor), so descending it reduces that KL (the paper's printed sign is a typo)."""
    w = _weights(logp, sample_weight)
    return (w * (logp - logp_anchor).detach() * logp).sum()


def jbond_loss(
    logp_policy: Tensor,
    logp_anchor: Tensor,
    logp_policy_best: Tensor,
    reward_j: Tensor,
    beta: float,
    gamma: float = 0.0,
) -> tuple[Tensor, dict]:
    """J-BOND (Algorithm 2) on a batch of prompts: one policy sample y and the better anchor sample.

    L = mean_x [(1−β)·(−log π(y'_best)) + β·(−sg(R − B)·log π(y)) + γ·sg(log π(y) − log π_anchor(y))·log π(y)]
    with R = r_J(y) − sg(log π(y) − log π_anchor(y)) and B its leave-one-out mean over the batch.
    """
    forward, fw_metrics = forward_kl_loss(logp_policy_best)
    kl_anchor = (logp_policy - logp_anchor).detach()
    returns = reward_j - kl_anchor
    backward = policy_gradient_loss(logp_policy, returns, leave_one_out_baseline(returns))
    reg = kl_regulariser_loss(logp_policy, logp_anchor)
    loss = jeffreys_loss(forward, backward, beta) + gamma * reg
    metrics = {
        **fw_metrics,
        "jbond/reward_j": reward_j.mean(),
        "jbond/return": returns.mean(),
        "jbond/kl_anchor": kl_anchor.mean(),
        "jbond/loss": loss.detach(),
    }
    return loss, metrics


def reinforce_loss(
    logp: Tensor, logp_ref: Tensor, rewards: Tensor, beta_rl: float
) -> tuple[Tensor, dict]:
    """Baseline: REINFORCE with k samples per prompt ([P, k]), return r(y) − β_RL·(log π − log π_ref)
    and the leave-one-out baseline among the samples of the same prompt."""
    returns = (rewards - beta_rl * (logp - logp_ref)).detach()
    baseline = leave_one_out_baseline(returns, dim=-1)
    loss = policy_gradient_loss(logp.flatten(), returns.flatten(), baseline.flatten())
    return loss, {"reinforce/return": returns.mean(), "reinforce/kl_ref": (logp - logp_ref).detach().mean()}


def ema_update_(anchor: list[Tensor], policy: list[Tensor], eta: float) -> None:
    """θ_anchor ← (1−η)·θ_anchor + η·θ_policy in place, one foreach kernel per dtype group."""
    with torch.no_grad():
        torch._foreach_lerp_(anchor, policy, eta)
