"""Training rollouts and their log-probs: n responses per prompt from a model, and log π(response).

Sampling is at temperature 1 with no top-k / top-p, so the samples come from π itself (the BOND
estimators assume it). Prompts are generated in groups of ``rollout.batch_size`` counted from the start
of the step's global batch, and each group's sampler seed is derived from (run seed, step, role, index
of its first prompt): the samples of a prompt depend on neither the data-parallel layout (DP=2 draws
what DP=1 draws when the group size divides the per-rank share) nor on anything a resumed run would
have to restore.
"""

from __future__ import annotations

import hashlib

import torch

from megatron_bond.config import Config
from megatron_bond.rollout.generate import generate
from megatron_bond.rollout.sampling import SamplingParams
from megatron_bond.models.forward import forward_rows

TRAINING_SAMPLING = SamplingParams(temperature=1.0)


def derived_seed(*parts) -> int:
    """A 63-bit seed from any tuple of names and numbers (stable across processes and platforms)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_responses(chunks, cfg: Config, prompts: list[list[int]], n: int, seed_parts: tuple,
                     first_index: int, stop_ids: tuple[int, ...]) -> list[list[list[int]]]:
    """[prompt][sample] response tokens (the stop token included where one was sampled).
    ``first_index``: the global index of ``prompts[0]`` in the step's batch."""
    if n == 0:  # an algorithm that samples nothing from these weights
        return [[] for _ in prompts]
    out: list[list[list[int]]] = []
    size = cfg.rollout.batch_size
    with torch.no_grad():
        for start in range(0, len(prompts), size):
            group = prompts[start : start + size]
            seed = derived_seed(*seed_parts, first_index + start)
            rollout = generate(chunks, cfg, [p for p in group for _ in range(n)], cfg.rollout.max_new_tokens,
                               TRAINING_SAMPLING, seed, stop_ids)
            out += [rollout.responses[i * n : (i + 1) * n] for i in range(len(group))]
    return out


def truncated(responses: list[list[int]], max_new_tokens: int, stop_ids: tuple[int, ...]) -> list[bool]:
    """Which responses were cut at ``max_new_tokens`` (no stop id at their end)."""
    return [len(r) >= max_new_tokens and (not r or r[-1] not in stop_ids) for r in responses]


def response_logprobs(chunks, cfg: Config, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
    """log π(response | prompt) summed over the response tokens, through the fused scoring head: [n] fp64,
    on the host (the BOND maths and the metrics take a few numbers per prompt there).
    Never the sampler's log-probs: those come from full logits in the model dtype on another path."""
    out = []
    size = cfg.rollout.score_batch_size
    with torch.no_grad():
        for start in range(0, len(prompts), size):
            rows = [p + r for p, r in zip(prompts[start : start + size], responses[start : start + size])]
            logp = forward_rows(chunks, cfg, rows).double()  # [b, width − 1]: log p(t_i | t_<i), i ≥ 1
            for i, (p, r) in enumerate(zip(prompts[start : start + size], responses[start : start + size])):
                out.append(logp[i, len(p) - 1 : len(p) - 1 + len(r)].sum())
    return torch.stack(out).cpu() if out else torch.zeros(0, dtype=torch.float64)  # an empty data-parallel share
