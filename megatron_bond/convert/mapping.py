"""Declarative HF <-> Megatron weight mappings: a table of rules per model family.

A rule names one Megatron tensor of the TP=1, PP=1 model (``{i}`` = layer index), the Hugging Face
tensors it is made of, and how they combine:
  copy     one tensor, as is
  vocab    embedding / output rows, zero-padded to the padded vocabulary (sliced back on export)
  qkv      q, k, v interleaved per query group, Megatron's fused layout: [q_g; k_g; v_g] for each group
  gate_up  gate and up projections stacked, gate first (Megatron's gated MLP chunks it in that order)
Every transform is exact, so a round trip is bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.config import ModelConfig


class VocabMismatch(ValueError):
    """An embedding or output layer whose rows are not the config's vocab_size (before padding)."""


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: tuple[str, ...]
    kind: str = "copy"

    def expand(self, num_layers: int) -> list[tuple[str, tuple[str, ...]]]:
        if "{i}" not in self.megatron:
            return [(self.megatron, self.hf)]
        return [(self.megatron.format(i=i), tuple(k.format(i=i) for k in self.hf)) for i in range(num_layers)]


def _qkv_groups(m: ModelConfig) -> tuple[int, int, int]:
    groups = m.num_query_groups or m.num_attention_heads
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    return groups, m.num_attention_heads // groups, head_dim


def to_megatron(kind: str, tensors: list[Tensor], m: ModelConfig) -> Tensor:
    if kind == "copy":
        return tensors[0]
    if kind == "vocab":
        (w,) = tensors
        if w.shape[0] != m.vocab_size:  # zero rows padded up to a wrong vocab_size would shift every log-prob
            raise VocabMismatch(f"{w.shape[0]} rows where vocab_size is {m.vocab_size}")
        pad = m.padded_vocab_size() - w.shape[0]
        return torch.cat([w, w.new_zeros(pad, *w.shape[1:])]) if pad else w
    if kind == "gate_up":
        return torch.cat(tensors, dim=0)
    if kind == "qkv":
        q, k, v = tensors
        groups, per_group, hd = _qkv_groups(m)
        h = q.shape[-1]
        qkv = torch.cat([q.view(groups, per_group * hd, h), k.view(groups, hd, h), v.view(groups, hd, h)], dim=1)
        return qkv.reshape(-1, h)
    raise ValueError(f"unknown mapping kind {kind!r}")


def to_hf(kind: str, tensor: Tensor, m: ModelConfig) -> list[Tensor]:
    if kind == "copy":
        return [tensor]
    if kind == "vocab":
        return [tensor[: m.vocab_size]]
    if kind == "gate_up":
        return list(torch.chunk(tensor, 2, dim=0))
    if kind == "qkv":
        groups, per_group, hd = _qkv_groups(m)
        h = tensor.shape[-1]
        q, k, v = torch.split(tensor.view(groups, (per_group + 2) * hd, h), [per_group * hd, hd, hd], dim=1)
        return [q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)]
    raise ValueError(f"unknown mapping kind {kind!r}")


def expected_shapes(kind: str, shapes: list[tuple[int, ...]], m: ModelConfig) -> tuple[int, ...]:
    """Shape the Megatron tensor will have, from the HF shapes (checked before any copy)."""
    return tuple(to_megatron(kind, [torch.empty(s, device="meta") for s in shapes], m).shape)
