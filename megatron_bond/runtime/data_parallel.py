"""Spread independent work items over data-parallel replicas and collect the results in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def map_over_data_parallel(items: Sequence, fn: Callable[[list], list], batch_size: int) -> list:
    """``fn`` on batches of this replica's items (every dp-th item); every rank gets all results."""
    from megatron.core import parallel_state as ps

    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = list(range(rank, len(items), dp))
    results = {}
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        results.update(zip(idx, fn([items[i] for i in idx])))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, results)
    merged = {k: v for part in gathered for k, v in part.items()}
    return [merged[i] for i in range(len(items))]
