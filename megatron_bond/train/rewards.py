"""Rewards of sampled responses: a Megatron reward model, a Python function, or the tiny run's rule.

Every reward is called as ``reward(prompts, responses)`` on lists of token-id lists and returns a [n]
float64 tensor, identical on every rank of a model-parallel group.
- Reward model: a checkpoint converted by tools/convert_hf_to_megatron.py (a Gemma
  ForSequenceClassification), loaded at the policy's TP/PP layout; the reward is its scalar head at the
  last token of prompt + response. Its vocabulary must be the policy's.
- ``reward.url``: a service answering POSTed batches (train/http_reward.py).
- ``module:function``: ``fn(prompts, responses)`` returning one float per response (for rule-based
  tasks); a function with a ``tokenizer`` parameter also gets the policy checkpoint's tokenizer
  (``decode(ids) -> str``; SentencePiece's or tokenizer.json's methods beside it; None without one).
"""

from __future__ import annotations

import importlib
import inspect
import math

import torch

from megatron_bond.config import Config, ConfigError
from megatron_bond.models.forward import forward_rows
from megatron_bond.train.samples import truncated


def tiny_reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
    """The tiny run's rule: the mean token id of the response over 255, in [0, 1] with many distinct
    values (higher ids are better), so J-BOND has something to climb on random-token prompts."""
    return [sum(r) / (255.0 * len(r)) for r in responses]


class FunctionReward:
    def __init__(self, spec: str, tokenizer=None):
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"reward.function: cannot load {spec!r} ({err})") from None
        if not callable(fn):
            raise ConfigError(f"reward.function: {spec!r} is not callable")
        self.fn, self.spec = fn, spec
        self.kwargs = {"tokenizer": tokenizer} if "tokenizer" in inspect.signature(fn).parameters else {}

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        if not responses:  # an empty data-parallel share of the held-out prompts
            return torch.zeros(0, dtype=torch.float64)
        values = list(self.fn(prompts, responses, **self.kwargs))
        if len(values) != len(responses):
            raise ConfigError(f"reward function {self.spec} returned {len(values)} rewards for {len(responses)} responses")
        for i, v in enumerate(values):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"reward function {self.spec} returned {v!r} for response {i} "
                                  f"(tokens {responses[i][:8]}...): rewards must be finite numbers")
        return torch.tensor(values, dtype=torch.float64)


class ModelReward:
    """``budget``: tokens per packed microbatch (None: right-padded batches of ``batch_size`` rows)."""

    def __init__(self, chunks, cfg: Config, batch_size: int, budget: int | None = None):
        self.chunks, self.cfg, self.batch_size, self.budget = chunks, cfg, batch_size, budget
        for chunk in chunks:
            chunk.eval()

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        rows = [p + r for p, r in zip(prompts, responses)]
        out = []
        with torch.no_grad():
            # Packed, one call takes every row and its packs are the microbatches.
            size = self.batch_size if self.budget is None else max(len(rows), 1)
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                out += [v[-1].double() for v in forward_rows(self.chunks, self.cfg, batch, self.budget)]
        rewards = torch.stack(out).cpu() if out else torch.zeros(0, dtype=torch.float64)
        if not torch.isfinite(rewards).all():
            raise ConfigError("the reward model returned a non-finite reward: check its checkpoint and dtype")
        return rewards


class TruncatedReward:
    """rollout.truncated_reward for responses cut at max_new_tokens, the source's reward for the rest
    (the source scores the complete ones only)."""

    def __init__(self, source, value: float, max_new_tokens: int, stop_ids: tuple[int, ...]):
        self.source, self.value, self.max_new_tokens, self.stop_ids = source, value, max_new_tokens, stop_ids

    def __call__(self, prompts: list[list[int]], responses: list[list[int]]) -> torch.Tensor:
        cut = truncated(responses, self.max_new_tokens, self.stop_ids)
        rewards = torch.full((len(responses),), self.value, dtype=torch.float64)
        keep = [i for i, c in enumerate(cut) if not c]
        rewards[keep] = self.source([prompts[i] for i in keep], [responses[i] for i in keep])
        return rewards


def build_reward(cfg: Config, stop_ids: tuple[int, ...], tokenizer=None):
    """The run's reward (after init_distributed: a reward model loads at the policy's layout)."""
    source = _reward_source(cfg, tokenizer)
    value = cfg.rollout.truncated_reward
    return source if value is None else TruncatedReward(source, value, cfg.rollout.max_new_tokens, stop_ids)


def _reward_source(cfg: Config, tokenizer=None):
    r = cfg.reward
    if r.function:
        return FunctionReward(r.function, tokenizer)
    if r.url:
        from megatron_bond.train.http_reward import HttpReward

        return HttpReward(r, tokenizer)
    if r.ckpt:
        from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config

        # complete: resolve_config checked it before any process group
        depth = read_checkpoint_config(r.ckpt, check=False).model.num_layers
        rcfg = read_checkpoint_config(r.ckpt, cfg.parallel.beside_policy(depth, cfg.model.num_layers), check=False)
        if not rcfg.model.reward_head:
            raise ConfigError(f"reward.ckpt {r.ckpt} is not a reward model (convert a *ForSequenceClassification)")
        if rcfg.model.vocab_size != cfg.model.vocab_size:
            raise ConfigError(f"reward.ckpt {r.ckpt} has vocabulary {rcfg.model.vocab_size}, the policy "
                              f"{cfg.model.vocab_size}: the reward model must share the policy's tokenizer")
        budget = (r.max_tokens_per_microbatch or cfg.train.max_tokens_per_microbatch) if cfg.train.packing else None
        return ModelReward(load_model_checkpoint(r.ckpt, rcfg), rcfg, r.batch_size, budget)
    if cfg.policy.ckpt:
        raise ConfigError("reward: a run from a policy checkpoint needs reward.ckpt, reward.function or reward.url")
    return FunctionReward("megatron_bond.train.rewards:tiny_reward")
