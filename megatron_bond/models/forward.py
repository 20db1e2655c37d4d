"""One forward pass of token rows through a model at any TP/PP, for scoring and rewards: per-token
log-probs through the fused vocab-parallel head (no [tokens, vocab] logits anywhere), or a reward
model's per-position scores. Rows are right-padded into one batch (causal attention: padding after a
sequence cannot change it), in pipeline microbatches under PP (runtime/pipeline.py)."""

from __future__ import annotations

import torch

from megatron_bond.config import Config
from megatron_bond.models.gpt import without_sequence_parallel
from megatron_bond.models.heads import TokenLogProbHead
from megatron_bond.runtime.batch import right_pad
from megatron_bond.runtime.pipeline import broadcast_from_last_stage, forward_microbatches


def forward_rows(chunks, cfg: Config, batch: list[list[int]]) -> torch.Tensor:
    """One forward-only pass through Megatron's schedule over right-padded rows, on every rank: per-token
    log-probs log p(t_i | t_<i) [b, width − 1] (fp32, the fused head), or per-position rewards
    [b, width] for a reward model. Entries past a row's length are padding."""
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
