"""Plain-torch references: full [tokens, vocab] logits, log_softmax, gather. Tests and benchmarks only."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_logits(hidden: Tensor, weight: Tensor, vocab_size: int | None = None,
                     softcap: float | None = None, temperature: float = 1.0) -> Tensor:
    """Full fp32 logits; rows of ``weight`` at or beyond ``vocab_size`` (vocab padding) get −inf."""
    z = hidden.float() @ weight.float().T
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    if vocab_size is not None and vocab_size < weight.shape[0]:
        z[:, vocab_size:] = float("-inf")
    return z


def reference_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
    """(log π(y_t), entropy_t) over all tokens, differentiable through ``hidden`` and ``weight``."""
    logp = torch.log_softmax(reference_logits(hidden, weight, **kwargs), dim=-1)
    p = logp.exp()
    entropy = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), entropy


def reference_weighted_loss(hidden: Tensor, weight: Tensor, targets: Tensor, weights: Tensor, **kwargs) -> Tensor:
    """Σ_t w_t · log π(y_t)."""
    logp, _ = reference_token_logprobs(hidden, weight, targets, **kwargs)
    return (weights.float() * logp).sum()
