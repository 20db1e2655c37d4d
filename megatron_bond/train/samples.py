"""Training rollouts' settings and the trainer's log-probs of responses: log π(response) through the
fused scoring head, per token and summed.

Sampling is at temperature 1 with no top-k / top-p, so the samples come from π itself (the BOND
estimators assume it); the engine that draws them is rollout/engine.py's.
"""

from __future__ import annotations

import torch

from megatron_bond.config import Config
from megatron_bond.rollout.sampling import SamplingParams
from megatron_bond.models.forward import forward_rows

TRAINING_SAMPLING = SamplingParams(temperature=1.0)


def truncated(responses: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...]) -> list[bool]:
    """Which responses were cut at ``max_new_tokens`` (no stop id at their end)."""
    return [len(r) >= max_new_tokens and (not r or r[-1] not in stop_ids) for r in responses]


def response_token_logprobs(chunks, cfg: Config, prompts: list[list[int]], responses: list[list[int]]) -> list[torch.Tensor]:
    """log π(token | prefix) of every response token through the fused scoring head: one fp64 tensor per
    response, on the host (the BOND maths and the metrics take a few numbers per prompt there).
    Never the sampler's log-probs: those come from full logits in the model dtype on another path."""
    out = []
    budget = score_budget(cfg)
    # Packed, one call takes every row and its packs are the microbatches.
    size = cfg.rollout.score_batch_size if budget is None else max(len(prompts), 1)
    with torch.no_grad():
        for start in range(0, len(prompts), size):
            rows = [p + r for p, r in zip(prompts[start : start + size], responses[start : start + size])]
            logp = forward_rows(chunks, cfg, rows, budget)  # per row: log p(t_i | t_<i), i ≥ 1
            out += [lp[len(p) - 1 :].double().cpu() for lp, p in zip(logp, prompts[start : start + size])]
    return out


def score_budget(cfg: Config) -> int | None:
    """Scoring's tokens per packed microbatch (None: right-padded rows, train.packing off)."""
    if not cfg.train.packing:
        return None
    return cfg.rollout.score_max_tokens_per_microbatch or cfg.train.max_tokens_per_microbatch


def response_logprobs(chunks, cfg: Config, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
    """log π(response | prompt), summed over the response tokens: [n] fp64 on the host."""
    return sequence_logprobs(response_token_logprobs(chunks, cfg, prompts, responses))


def sequence_logprobs(token_logprobs: list[torch.Tensor]) -> torch.Tensor:
    # An empty data-parallel share has no responses.
    return torch.stack([t.sum() for t in token_logprobs]) if token_logprobs else torch.zeros(0, dtype=torch.float64)
