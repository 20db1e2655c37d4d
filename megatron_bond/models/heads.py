"""Log-prob heads that the last pipeline stage applies to its final hidden states.

``BondGPTModel.forward(..., head=...)`` hands the post-norm hidden states [s, b, h] and this rank's vocab
shard of the output weight to a head instead of materialising logits, so sequence log-probs and BOND
losses go through the fused kernels of ``megatron_bond.ops`` inside Megatron's pipeline schedules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss


def _flat(hidden: Tensor) -> Tensor:
    """[s, b, h] -> [b*s, h], batch-major like the targets."""
    return hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])


@dataclass
class TokenLogProbHead:
    """log π(t_i | t_<i) of ``targets`` [b, s] -> [b, s] fp32 (and the entropy when asked)."""

    targets: Tensor
    entropy: bool = False
    temperature: float = 1.0

    def __call__(self, hidden: Tensor, weight: Tensor, spec: HeadSpec):
        spec = dataclasses.replace(spec, temperature=self.temperature)
        logp, ent = token_logprobs(_flat(hidden), weight, self.targets.reshape(-1), spec, self.entropy)
        shape = self.targets.shape
        return (logp.view(shape), ent.view(shape)) if self.entropy else logp.view(shape)


@dataclass
class WeightedLossHead:
    """Σ w · log π(targets) for stop-gradient per-token ``weights`` [b, s]: the fused training loss."""

    targets: Tensor
    weights: Tensor

    def __call__(self, hidden: Tensor, weight: Tensor, spec: HeadSpec) -> Tensor:
        return weighted_logprob_loss(_flat(hidden), weight, self.targets.reshape(-1), self.weights.reshape(-1), spec)


@dataclass
class LastTokenLogitsHead:
    """The next-token logits of the last position only, of this rank's vocab shard: [b, V_padded / TP] in
    the model dtype, softcapped as the plain logits path does. What a decode loop samples from (the
    sampler works on the shards, rollout/sampling.py): a prefill through the plain path would
    materialise [b, prompt, V] (78 GiB at Gemma 7B's 256k vocabulary for evaluation's 256 sequences of
    512 prompt tokens) to use one position of it."""

    def __call__(self, hidden: Tensor, weight: Tensor, spec: HeadSpec) -> Tensor:
        logits = hidden[-1] @ weight.T
        return torch.tanh_(logits / spec.softcap) * spec.softcap if spec.softcap else logits


def sequence_logprobs(token_logp: Tensor, response_mask: Tensor) -> Tensor:
    """Σ over response tokens: [b, s] x [b, s] -> [b]."""
    return (token_logp * response_mask.to(token_logp.dtype)).sum(-1)
