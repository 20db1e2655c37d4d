"""Hugging Face-named tensors from a live model's tensor-parallel shards, without disk: what a rollout
engine's refit reads (rollout/vllm_engine.py), through the same tables as the exporter.

The tables map the TP=1 model, so every tensor-parallel shard is **gathered** over the TP group first
(one tensor at a time: at most one full tensor beyond the shards is alive), then mapped with ``to_hf``:
  - column-parallel tensors (fused QKV, the embedding / output rows) along dim 0; Megatron shards QKV by
    whole query groups and the vocabulary by consecutive rows, so the gathered tensor is the TP=1 layout
    and ``to_hf`` splits it (the padded vocabulary is sliced back to ``vocab_size`` there);
  - the gated MLP's fc1 per half: each rank holds [gate_r; up_r], so gate and up are gathered apart (a plain
    gather would interleave them as [gate_0; up_0; gate_1; up_1]);
  - row-parallel tensors (attention output, fc2) along dim 1;
  - replicated tensors (the norms) as they are.
Every rank of a TP group yields the same full tensors (vLLM's loader takes its own shard of each).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from megatron.core import parallel_state as ps
from torch import Tensor

from megatron_bond.config import Config, ConfigError
from megatron_bond.convert.gemma import rules_for
from megatron_bond.convert.mapping import to_hf
from megatron_bond.models.gpt import unwrap
from megatron_bond.models.keys import canonical_key


def _gather(local: Tensor, dim: int, group) -> Tensor:
    parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


# The dim megatron-core's parallel layers shard each mapped tensor along (column-parallel: 0, row-parallel:
# 1; any other tensor is replicated). Written out because the layers set their ``partition_dim`` attribute
# only when they initialise their weights, which a model built to be loaded does not.
PARTITION_DIM = {"word_embeddings.weight": 0, "output_layer.weight": 0, "linear_qkv.weight": 0,
                 "linear_fc1.weight": 0, "linear_proj.weight": 1, "linear_fc2.weight": 1}


def partition_dim(key: str) -> int | None:
    return next((dim for suffix, dim in PARTITION_DIM.items() if key.endswith("." + suffix)), None)


def full_tensor(key: str, param: Tensor, kind: str) -> Tensor:
    """The TP=1 tensor of one parameter (collective over the TP group for a sharded one)."""
    dim = partition_dim(key)
    if dim is None or ps.get_tensor_model_parallel_world_size() == 1:
        return param.detach()
    group = ps.get_tensor_model_parallel_group()
    if kind == "gate_up":
        return torch.cat([_gather(half, dim, group) for half in torch.chunk(param.detach(), 2, dim=0)], dim=0)
    return _gather(param.detach(), dim, group)


def hf_tensors(chunks: list, cfg: Config) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor) for every tensor of the family's table, in the table's order (the same on every
    rank, as the gathers need). The tensors keep the model's dtype."""
    if len(chunks) != 1:
        raise ConfigError("weights are streamed from one pipeline stage holding the whole model (PP=1, no "
                          "virtual stages)")
    params = {canonical_key(k): p for k, p in unwrap(chunks[0]).named_parameters()}  # TE's names as the local spec's
    for rule in rules_for(cfg.model):
        for mk, hk in rule.expand(cfg.model.num_layers):
            yield from zip(hk, to_hf(rule.kind, full_tensor(mk, params[mk], rule.kind), cfg.model))
