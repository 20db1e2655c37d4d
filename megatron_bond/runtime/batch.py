"""Batches across data-parallel replicas, in one place: each replica's share of a batch (an empty share is
legal), gathering a per-replica tensor back in rank order, right-padding token rows into one tensor, and
spreading independent work items over replicas with the results collected in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch


def map_over_data_parallel(items: Sequence, fn: Callable[[list], list], batch_size: int) -> Iterator:
    """Yield ``fn``'s result for every item, in input order, on every rank, as they are computed.

    Items go out in global chunks of ``batch_size`` per replica: replica r runs ``fn`` on its part of
    the chunk (the ranks of one replica together, for their model-parallel collectives), then every rank
    gathers the chunk's results. ``fn`` runs on an empty part too (the last chunk's), so that every rank
    calls it equally often: an engine's steps may be collective over the replicas (vLLM's are). Every
    rank must consume the iterator (it is made of collectives)."""
    from megatron.core import parallel_state as ps

    dp, replica = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    for start in range(0, len(items), batch_size * dp):
        mine = list(items[start + replica * batch_size : start + (replica + 1) * batch_size])
        results = fn(mine)
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (replica, results))
        by_replica = dict(gathered)  # the ranks of one replica report the same results
        for r in range(dp):
            yield from by_replica[r]


def dp_share(n: int, dp: int, replica: int) -> slice:
    """Replica ``replica``'s part of ``n`` items split as evenly as possible over ``dp`` replicas (the first
    n mod dp get one more). It may be empty: its ranks still join every data-parallel collective."""
    base, extra = divmod(n, dp)
    start = replica * base + min(replica, extra)
    return slice(start, start + base + (replica < extra))


def gather_dp(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-replica [share, ...] tensor over data-parallel ranks, in rank order, on the host
    (the equal shares of a training batch; NCCL gathers device tensors)."""
    from megatron.core import parallel_state as ps

    if ps.get_data_parallel_world_size() == 1:
        return x.cpu()  # the global batch lives on the host wherever scoring ran (seen on an H200)
    x = x.to("cuda" if torch.cuda.is_available() else "cpu")
    parts = [torch.empty_like(x) for _ in range(ps.get_data_parallel_world_size())]
    torch.distributed.all_gather(parts, x, group=ps.get_data_parallel_group())
    return torch.cat(parts).cpu()


def right_pad(rows: Sequence[Sequence[int]], width: int, pad_id: int, device=None) -> torch.Tensor:
    """[len(rows), width] token ids, each row from position 0 and ``pad_id`` after it (causal models:
    padding after a sequence cannot change it)."""
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens if device is None else tokens.to(device)
