"""Batched generation from a Megatron model (policy, anchor, any converted checkpoint) under TP and PP,
with megatron-core's static KV cache.

Prompts of different lengths share a batch the way Megatron's static engine does it: every row's
tokens sit at their true positions (no padding inside a sequence, so RoPE and the causal mask need no
per-row offsets); the cache is filled up to the shortest prompt in one pass, then one position per
step, where rows still inside their prompt take the prompt's token instead of a sample. Rows stop at a
stop id or after ``max_new_tokens``. Prompts longer than the model's context are refused.
With ``n`` samples per prompt, each prompt is prefilled once and its cache forked into its n rows
(J-BOND's 2 anchor samples of a prompt, evaluation's k reference samples).
The last pipeline stage samples (identically on its TP ranks: same logits, same seeded generator) and
broadcasts the tokens to the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_bond.config import Config, ConfigError
from megatron_bond.jsonl import check_token_ids
from megatron_bond.models.heads import LastTokenLogitsHead
from megatron_bond.rollout.sampling import SamplingParams, sample
from megatron_bond.runtime.batch import right_pad
from megatron_bond.runtime.megatron_compat import advance_static_context
from megatron_bond.runtime.pipeline import broadcast_from_last_stage, forward_once


@dataclass
class Rollout:
    prompts: list[list[int]]
    responses: list[list[int]]  # generated tokens, the stop token included when one was sampled
    logprobs: list[list[float]]  # the sampler's log-prob of each response token (see sampling.py)


def check_context(prompt_len: int, max_new_tokens: int, max_seq_length: int, where: str) -> None:
    if prompt_len + max_new_tokens > max_seq_length:
        raise ConfigError(f"{where} ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceed the "
                          f"model's max_seq_length ({max_seq_length})")


def generate(chunks, cfg: Config, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
             seed: int, stop_ids: tuple[int, ...] = (), n: int = 1) -> Rollout:
    """``n`` samples of each prompt: rows i·n … i·n + n − 1 of the result are prompt i's."""
    from megatron_bond.models.gpt import without_sequence_parallel

    with without_sequence_parallel(chunks):
        return _generate(chunks, cfg, prompts, max_new_tokens, params, seed, stop_ids, n)


def fork_cache(context, n: int) -> None:
    """Each cached row becomes n consecutive rows (the prefix of a prompt's n samples), on every layer
    this stage holds; the context then serves n times the batch."""
    for layer, (key, value) in context.key_value_memory_dict.items():
        context.key_value_memory_dict[layer] = (key.repeat_interleave(n, dim=1), value.repeat_interleave(n, dim=1))
    context.max_batch_size *= n


def _generate(chunks, cfg: Config, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
              seed: int, stop_ids: tuple[int, ...], n: int) -> Rollout:
    from megatron.core.inference.contexts import StaticInferenceContext

    if not prompts:
        raise ConfigError("no prompts to generate from")
    for i, prompt in enumerate(prompts):
        check_token_ids(prompt, cfg.model.vocab_size, f"prompt {i}")
    device = next(chunks[0].parameters()).device
    unique = len(prompts)
    prompts = [p for p in prompts for _ in range(n)]
    b = len(prompts)
    plen = torch.tensor([len(p) for p in prompts], device=device)
    total = int(plen.max()) + max_new_tokens
    check_context(int(plen.max()), max_new_tokens, cfg.model.max_seq_length, "prompt")
    buf = right_pad(prompts, total, cfg.model.pad_token_id, device)
    logp_buf = torch.zeros(b, total, device=device)
    stops = torch.tensor(sorted(stop_ids) or [-1], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    context = StaticInferenceContext(unique, total)

    head = LastTokenLogitsHead()

    def logits_at(rows: torch.Tensor, start: int, end: int):
        positions = torch.arange(start, end, device=device).expand(len(rows), end - start)
        out = forward_once(
            chunks,
            # runtime_gather_output: megatron-core asserts it in inference mode (the head gathers itself)
            lambda model: model(rows[:, start:end], positions, None, inference_context=context,
                                runtime_gather_output=True, head=head),
            end - start, len(rows),
        )
        advance_static_context(context, end - start)
        return None if out is None else out[:, : cfg.model.vocab_size]

    for chunk in chunks:
        chunk.eval()
    done = torch.zeros(b, dtype=torch.bool, device=device)
    produced = torch.zeros(b, dtype=torch.long, device=device)
    with torch.inference_mode():
        # The common prefix once per prompt (rows 0, n, 2n, … of buf), then forked into its n rows.
        logits = logits_at(buf[::n], 0, int(plen.min()))
        if n > 1:
            fork_cache(context, n)
            logits = None if logits is None else logits.repeat_interleave(n, dim=0)
        for t in range(int(plen.min()), total):
            picked = None
            if logits is not None:
                tok, lp = sample(logits, params, gen)
                picked = torch.stack([tok.float(), lp])
            tok, lp = broadcast_from_last_stage(picked, (2, b))
            tok = tok.long()
            in_prompt = t < plen
            active = ~done & ~in_prompt
            buf[:, t] = torch.where(in_prompt, buf[:, t], torch.where(active, tok, cfg.model.pad_token_id))
            logp_buf[:, t] = torch.where(active, lp, 0.0)
            produced += active.long()
            done |= active & (torch.isin(tok, stops) | (produced >= max_new_tokens))
            if bool(done.all()) or t == total - 1:
                break
            logits = logits_at(buf, t, t + 1)
    n = produced.tolist()
    lengths = plen.tolist()
    return Rollout(
        prompts=[list(p) for p in prompts],
        responses=[buf[i, lengths[i] : lengths[i] + n[i]].tolist() for i in range(b)],
        logprobs=[logp_buf[i, lengths[i] : lengths[i] + n[i]].tolist() for i in range(b)],
    )
