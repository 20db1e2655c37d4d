"""Forward-only passes through Megatron's pipeline schedule, and sharing the last stage's result."""

from __future__ import annotations

from collections.abc import Callable

import torch


def forward_once(chunks, forward: Callable, seq_length: int, batch_size: int):
    """Run ``forward(model) -> tensor`` as one forward-only microbatch through Megatron's schedule
    (p2p between stages under PP). Returns the last stage's tensor, None on other stages."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if ps.get_pipeline_model_parallel_world_size() == 1 and len(chunks) == 1:
        return forward(chunks[0]).detach()  # no stages to hand over to: skip the schedule's overhead

    def step(_data, model):
        return forward(model), lambda out: (out.sum(), {"out": out.detach()})

    out = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter([None]), model=chunks, num_microbatches=1,
        seq_length=seq_length, micro_batch_size=batch_size, forward_only=True,
    )
    return out[0]["out"] if ps.is_pipeline_last_stage() else None


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
