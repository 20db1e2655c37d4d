"""Batched generation from a Megatron model (policy, anchor, any converted checkpoint) under TP and PP,
with megatron-core's static KV cache.

Prompts of different lengths share a batch left-padded to the longest: row r's prompt fills the slots
just before the first generated one and no query sees a row's padding (a key mask), so the whole batch
is prefilled in one pass and every decode step writes one slot for all rows. The slots serve as
positions: RoPE sees only query-key distances, which a row's shift by its padding does not change.
Rows stop at a stop id or after ``max_new_tokens``; prompts longer than the model's context are refused.
With ``n`` samples per prompt, each prompt is prefilled once and its cache forked into its n rows
(J-BOND's 2 anchor samples of a prompt, evaluation's k reference samples).
Under PP each forward (the prefill, every decode step) runs in pipeline microbatches of rows, each on
its rows of the cache, so the stages overlap. The last stage samples from its TP ranks' vocab shards
(rollout/sampling.py: keyed Gumbel-max, one [rows, 4] all-gather per step, one more for top-k, the
logits gathered for top-p; the same tokens on every TP rank) and broadcasts the tokens to the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_bond.config import Config, ConfigError
from megatron_bond.jsonl import check_token_ids
from megatron_bond.models.heads import LastTokenLogitsHead
from megatron_bond.rollout.sampling import SamplingParams, Shard, sample
from megatron_bond.runtime.megatron_compat import LeftPaddedContext, advance_static_context
from megatron_bond.runtime.pipeline import broadcast_from_last_stage, forward_microbatches


@dataclass
class Rollout:
    prompts: list[list[int]]
    responses: list[list[int]]  # generated tokens, the stop token included when one was sampled
    logprobs: list[list[float]]  # the sampler's log-prob of each response token (see sampling.py)
    # Token positions the forwards computed, and those of them that were not padding (a prompt's tokens
    # once, each response token but the last): the left padding of the prefill and the rows that
    # stopped while others went on make up the difference.
    computed: int
    useful: int


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


def _generate(chunks, cfg: Config, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
              seed: int, stop_ids: tuple[int, ...], n: int) -> Rollout:
    from megatron.core import parallel_state as ps

    if not prompts:
        raise ConfigError("no prompts to generate from")
    for i, prompt in enumerate(prompts):
        check_token_ids(prompt, cfg.model.vocab_size, f"prompt {i}")
    device = next(chunks[0].parameters()).device
    width = max(len(p) for p in prompts)  # the slot of every row's first generated token
    check_context(width, max_new_tokens, cfg.model.max_seq_length, "prompt")
    pad = torch.tensor([width - len(p) for p in prompts], device=device)  # int64, per unique prompt
    ragged = bool(pad.any())
    if ragged:
        check_padding_mask(cfg)
    total = width + max_new_tokens
    b = len(prompts) * n
    buf = torch.full((len(prompts), total), cfg.model.pad_token_id, dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        buf[i, width - len(prompt) : width] = torch.tensor(prompt, device=device)
    logp_buf = torch.zeros(b, max_new_tokens, device=device)  # fp32: the sampler's log-probs
    stops = torch.tensor(sorted(stop_ids) or [-1], device=device)
    context = LeftPaddedContext(pad, total)
    head = LastTokenLogitsHead()

    def logits_at(rows: torch.Tensor, start: int, end: int):
        slots = torch.arange(start, end, device=device)
        positions = slots.expand(len(rows), end - start)
        mask = None
        if ragged:  # keys a query may not see, [rows, 1, sq, end] bool: the row's padding and later slots
            keys = torch.arange(end, device=device)
            mask = ((keys < context.pad.view(-1, 1, 1)) | (keys > slots.view(1, -1, 1))).unsqueeze(1)

        def forward(model, part: slice):
            context.batch_size_offset = part.start  # the cache rows of this pipeline microbatch
            # runtime_gather_output: megatron-core asserts it in inference mode (the head returns its shard)
            return model(rows[part, start:end], positions[part], None if mask is None else mask[part],
                         inference_context=context, runtime_gather_output=True, head=head)

        out = forward_microbatches(chunks, forward, len(rows), end - start)
        advance_static_context(context, end - start)
        return out

    def shard(logits) -> Shard:
        return Shard(ps.get_tensor_model_parallel_rank() * logits.shape[-1], cfg.model.vocab_size,
                     ps.get_tensor_model_parallel_group())

    for chunk in chunks:
        chunk.eval()
    done = torch.zeros(b, dtype=torch.bool, device=device)
    produced = torch.zeros(b, dtype=torch.long, device=device)
    with torch.inference_mode():
        # Every prompt once, in one pass, then its cache forked into its n rows.
        logits = logits_at(buf, 0, width)
        if n > 1:
            context.fork(n)
            buf = buf.repeat_interleave(n, dim=0)
            logits = None if logits is None else logits.repeat_interleave(n, dim=0)
        steps = 0
        for t in range(width, total):
            steps += 1
            picked = None
            if logits is not None:
                tok, lp = sample(logits, params, seed, t, shard(logits))
                picked = torch.stack([tok.float(), lp])
            tok, lp = broadcast_from_last_stage(picked, (2, b))
            tok = tok.long()
            active = ~done
            buf[:, t] = torch.where(active, tok, cfg.model.pad_token_id)
            logp_buf[:, t - width] = torch.where(active, lp, 0.0)
            produced += active.long()
            done |= torch.isin(tok, stops) | (produced >= max_new_tokens)
            if bool(done.all()):
                break
            logits = logits_at(buf, t, t + 1)
    counts = produced.tolist()
    rows = [p for p in prompts for _ in range(n)]
    return Rollout(
        prompts=[list(p) for p in rows],
        responses=[buf[i, width : width + counts[i]].tolist() for i in range(b)],
        logprobs=[logp_buf[i, : counts[i]].tolist() for i in range(b)],
        computed=len(prompts) * width + b * max(steps - 1, 0),
        useful=sum(len(p) for p in prompts) + sum(max(c - 1, 0) for c in counts),
    )


def check_padding_mask(cfg: Config) -> None:
    """The gpt family runs megatron-core's attention, whose fused kernels (Transformer Engine's, and the
    masked-softmax fusion on GPU) apply their own causal mask in place of a given one; Gemma's attention
    (models/gemma_layers.py) takes the padding mask everywhere."""
    from megatron_bond.models.spec import use_transformer_engine

    if cfg.model.family == "gpt" and (use_transformer_engine(cfg) or torch.cuda.is_available()):
        raise ConfigError("generation from prompts of different lengths: the gpt family's megatron-core attention "
                          "drops padding masks on GPU; use one prompt length, or a Gemma family")
