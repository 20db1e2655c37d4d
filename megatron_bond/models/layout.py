"""Views of a sharded model that do not depend on its TP/PP layout.

Every parameter shard knows its place in the global tensor through Megatron's sharded state dict (the
same metadata that makes distributed checkpoints reshardable). From it:
- ``init_layout_invariant`` gives every global tensor the same values at any layout, so runs at TP=1,
  TP=2, PP=2 start from one model (Megatron's own init differs between pipeline layouts);
- ``gather_full`` assembles the global tensors on every rank (tests and small models only: each rank
  holds a full copy).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories, is_main_replica
from megatron.core.dist_checkpointing.dict_utils import nested_values

from megatron_bond.models.gpt import unwrap
from megatron_bond.models.keys import canonical


def sharded_tensors(chunks) -> Iterator[ShardedTensor]:
    for chunk in chunks:
        sd = canonical(unwrap(chunk).sharded_state_dict())
        apply_factories(sd)
        for value in nested_values(sd):
            if isinstance(value, ShardedTensor) and value.data is not None and value.data.is_floating_point():
                yield value


@torch.no_grad()
def init_layout_invariant(chunks, seed: int, std: float = 0.02) -> None:
    """Norm weights (1-D, named *norm*) get 1 + noise, everything else N(0, std), per global key."""
    for sh in sharded_tensors(chunks):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(sh.key.encode()))
        full = torch.randn(sh.global_shape, generator=gen, dtype=torch.float32)
        if "norm" in sh.key and len(sh.local_shape) == 1:
            full = 1.0 + 0.1 * full
        else:
            full = std * full
        sh.data.copy_(full[sh.global_slice()].reshape(sh.data.shape))


@torch.no_grad()
def gather_full(chunks) -> dict[str, torch.Tensor]:
    """Global fp32 tensors, identical on every rank (a sum over main replicas of zero-padded shards)."""
    local: dict[str, torch.Tensor] = {}
    for sh in sharded_tensors(chunks):
        full = local.setdefault(sh.key, torch.zeros(sh.global_shape, dtype=torch.float32))
        if is_main_replica(sh.replica_id):
            piece = full[sh.global_slice()]
            piece += sh.data.detach().float().cpu().reshape(piece.shape)
    shapes = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shapes, {k: tuple(v.shape) for k, v in local.items()})
    union = {k: s for rank_shapes in shapes for k, s in rank_shapes.items()}
    out = {}
    for key in sorted(union):
        out[key] = local.get(key, torch.zeros(union[key]))
        torch.distributed.all_reduce(out[key])
    return out


@contextlib.contextmanager
def params_as_grads(chunks):
    """Temporarily put each parameter's gradient (DDP ``main_grad`` or ``grad``) in its place, so the
    layout views above read gradients."""
    saved = []
    for chunk in chunks:
        for p in chunk.parameters():
            grad = getattr(p, "main_grad", None)
            grad = p.grad if grad is None else grad
            saved.append((p, p.data.clone()))
            p.data.copy_(torch.zeros_like(p) if grad is None else grad)
    try:
        yield
    finally:
        for p, data in saved:
            p.data.copy_(data)
