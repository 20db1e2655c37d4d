"""One forward pass of token rows through a model at any TP/PP, for scoring and rewards: per-token
log-probs through the fused vocab-parallel head (no [tokens, vocab] logits anywhere), or a reward
model's per-position scores.

Two layouts, the same numbers: rows right-padded into one batch (causal attention: padding after a
sequence cannot change it), in pipeline microbatches under PP (runtime/pipeline.py); or, with a token
budget, rows packed end to end into microbatches of at most that many tokens (runtime/tokens.py), each
row a document that attends only to itself."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_bond.config import Config
from megatron_bond.models.gpt import without_sequence_parallel
from megatron_bond.models.heads import TokenLogProbHead
from megatron_bond.runtime.batch import right_pad
from megatron_bond.runtime.pipeline import broadcast_from_last_stage, forward_microbatches, forward_only
from megatron_bond.runtime.tokens import pack_rows, unpack


def forward_rows(chunks, cfg: Config, batch: list[list[int]], budget: int | None = None) -> list[torch.Tensor]:
    """One forward-only pass through Megatron's schedule, on every rank: each row's per-token log-probs
    log p(t_i | t_<i), i ≥ 1 ([len − 1] fp32, the fused head), or per-position rewards ([len] fp32) for a
    reward model. ``budget``: tokens per packed microbatch; None: right-padded rows."""
    values = (_packed if budget else _padded)(chunks, cfg, batch, budget)
    shift = 0 if cfg.model.reward_head else 1
    return [values[i][: len(r) - shift] for i, r in enumerate(batch)]


def _padded(chunks, cfg: Config, batch: list[list[int]], budget: None) -> torch.Tensor:
    reward = cfg.model.reward_head
    device = next(chunks[0].parameters()).device
    tokens = right_pad(batch, max(len(r) for r in batch), cfg.model.pad_token_id, device)
    inputs = tokens if reward else tokens[:, :-1]
    seq = inputs.shape[1]
    positions = torch.arange(seq, device=device).expand(len(batch), seq)

    def forward(model, part: slice):
        head = None if reward else TokenLogProbHead(tokens[part, 1:])
        return model(inputs[part], positions[part], None, head=head)

    with without_sequence_parallel(chunks):
        values = forward_microbatches(chunks, forward, len(batch), seq)
    return broadcast_from_last_stage(None if values is None else values.float(), (len(batch), seq))


def _packed(chunks, cfg: Config, batch: list[list[int]], budget: int) -> list[torch.Tensor]:
    reward = cfg.model.reward_head
    device = next(chunks[0].parameters()).device
    # Forward-only passes run without sequence parallelism (models/gpt.py): no length multiple needed.
    packs = [p.to(device) for p in pack_rows(batch, budget, labels=not reward, pad_id=cfg.model.pad_token_id,
                                             same_size=ps.get_pipeline_model_parallel_world_size() > 1)]

    def forward(model, pack):
        head = None if reward else TokenLogProbHead(pack.labels)
        return model(pack.tokens, pack.positions, None, head=head, packed_seq_params=pack.packed_seq_params())

    with without_sequence_parallel(chunks):
        values = forward_only(chunks, forward, packs, packs[0].size, 1)
    # One flat fp32 tensor of every pack's positions: its shape is known on every stage.
    flat = broadcast_from_last_stage(None if values is None else torch.cat([v.reshape(-1) for v in values]).float(),
                                     (sum(p.size for p in packs),))
    return unpack(packs, flat.split([p.size for p in packs]), len(batch))
