"""Forward-only passes through Megatron's pipeline schedule, and sharing the last stage's result."""

from __future__ import annotations

from collections.abc import Callable

import torch


def microbatch_count(rows: int) -> int:
    """How many forward-only microbatches a batch of ``rows`` goes through: one without pipeline stages
    (nothing to overlap); under PP the largest divisor of ``rows`` up to 2 × stages, so the stages work
    on different microbatches at once: each stage idles (pp − 1)/(m + pp − 1) of a pass instead of
    (pp − 1)/pp at m = 1 (a fifth instead of a half at PP=2 with 4 microbatches). A divisor, because Megatron's schedule
    sends tensors of one shape [seq, rows / m, hidden] between stages."""
    from megatron.core import parallel_state as ps

    pp = ps.get_pipeline_model_parallel_world_size()
    return max(m for m in range(1, min(rows, 2 * pp if pp > 1 else 1) + 1) if rows % m == 0)


def forward_microbatches(chunks, forward: Callable, rows: int, seq_length: int):
    """Run ``forward(model, part) -> tensor`` over the row slices ``part`` of a batch, as forward-only
    microbatches through Megatron's schedule (p2p between stages under PP, ``microbatch_count`` of them).
    Returns the last stage's tensors concatenated over the batch (dim 0), None on other stages."""
    count = microbatch_count(rows)
    size = rows // count
    out = forward_only(chunks, forward, [slice(i * size, (i + 1) * size) for i in range(count)], seq_length, size)
    return None if out is None else torch.cat(out)


def forward_only(chunks, forward: Callable, parts: list, seq_length: int, micro_batch_size: int) -> list | None:
    """``forward(model, part) -> tensor`` for each microbatch ``part`` through Megatron's forward-only
    schedule, whose p2p sends [seq_length, micro_batch_size, hidden] between stages: every part must have
    that shape. Returns the last stage's outputs in order (detached), None on other stages."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if ps.get_pipeline_model_parallel_world_size() == 1 and len(chunks) == 1:
        return [forward(chunks[0], part).detach() for part in parts]  # no stages to hand over to: skip the schedule

    items = iter(parts)

    def step(data_iterator, model):
        return forward(model, next(data_iterator)), lambda out: (out.sum(), {"out": out.detach()})

    out = get_forward_backward_func()(
        forward_step_func=step, data_iterator=items, model=chunks, num_microbatches=len(parts),
        seq_length=seq_length, micro_batch_size=micro_batch_size, forward_only=True,
    )
    return [o["out"] for o in out] if ps.is_pipeline_last_stage() else None


def broadcast_from_last_stage(tensor: torch.Tensor | None, shape, dtype=torch.float32) -> torch.Tensor:
    """Give every pipeline rank the last stage's result (other stages pass None)."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    if not ps.is_pipeline_last_stage():
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        tensor = torch.empty(shape, dtype=dtype, device=device)
    torch.distributed.broadcast(tensor, src=ps.get_pipeline_model_parallel_last_rank(),
                                group=ps.get_pipeline_model_parallel_group())
    return tensor
