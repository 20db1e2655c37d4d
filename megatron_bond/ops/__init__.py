"""Fused log-prob heads (docs/logprob.md)."""

from megatron_bond.ops.logprob import HeadSpec, token_logprobs, weighted_logprob_loss

__all__ = ["HeadSpec", "token_logprobs", "weighted_logprob_loss"]
