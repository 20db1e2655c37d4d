"""Token sampling from full-vocabulary logits: temperature, top-k, top-p (nucleus), greedy.

The log-prob reported for a sampled token is log softmax(logits / temperature) at that token, before
top-k / top-p filtering: at temperature 1 it is exactly the model's log π(y_t) that the scorer and the
BOND losses use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.config import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (use greedy for argmax decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p must lie in (0, 1]")
        if self.top_k < 0:
            raise ConfigError("top_k must be >= 0")


def filtered_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits / T with everything outside the top-k and the top-p nucleus set to −inf: [b, V] fp32."""
    z = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(z, min(params.top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_z, dim=-1) >= params.top_p  # keep the token that crosses top_p
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return z


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(token ids [b], their log-probs [b] under softmax(logits / T))."""
    if params.greedy:
        tokens = logits.max(dim=-1).indices  # the first maximum, as argmax, and faster on CPU
        logp = torch.log_softmax(logits.float(), dim=-1)
    else:
        z = filtered_logits(logits, params)
        tokens = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator).squeeze(-1)
        logp = torch.log_softmax(logits.float() / params.temperature, dim=-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
