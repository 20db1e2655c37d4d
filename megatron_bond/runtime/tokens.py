"""The token batch: variable-length rows packed end to end into microbatches under a token budget (the
one home of the packed row layout), and per-token outputs unpacked back to rows.

A row is a (prompt + response) token list. A log-prob pass feeds row[:-1] and predicts row[1:] (label t
is token t + 1, the right-padded layout's convention); a reward model's pass feeds the whole row. Each
row becomes one document of a pack: its positions restart at 0, its labels and loss weights stay its
own, and ``cu_seqlens`` tells attention where documents end (megatron-core's ``PackedSeqParams`` in the
"thd" format, tokens [1, T]). A document never spans two packs, so a row longer than the budget is
refused before any work (config/validate.py checks the recipe's longest row).

Packs are filled first-fit-decreasing (longest rows first, each into the first pack with room): with
rows of at most a budget's worth each, every pack but one is more than half full, and on the skewed
lengths of the demo over 95 % full (benchmarks/packing.py). The order is a pure function of the lengths,
so every rank of a model-parallel group builds the same packs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Pack:
    """One microbatch of documents laid end to end in a single row of ``tokens.shape[1]`` positions.

    ``rows``: the input index of each document, in layout order; ``cu_seqlens`` int32 [docs + 1] the
    document boundaries (None: a right-padded microbatch of len(rows) rows, ``padded_microbatches``) (a padding tail, when asked for, is one more document of its own, so attention
    never mixes it into a real one); ``tokens`` / ``positions`` / ``labels`` int64 [1, T]; ``weights``
    fp32 [1, T] (the loss weight of each label, 0 on padding) or None for forward-only passes."""

    rows: list[int]
    cu_seqlens: Tensor
    max_seqlen: int
    tokens: Tensor
    positions: Tensor
    labels: Tensor | None
    weights: Tensor | None

    @property
    def size(self) -> int:
        """Positions computed."""
        return self.tokens.numel()

    def packed_seq_params(self):
        """megatron-core's description of this layout for its attention and RoPE (positions restart at
        each boundary: rotary_pos_embedding's thd path maps each document from position 0 as long as
        ``max_seqlen`` is shorter than the pack, which a pack of two or more documents guarantees, and
        a single document starts at offset 0 either way)."""
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)

    def to(self, device) -> "Pack":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Pack(self.rows, move(self.cu_seqlens), self.max_seqlen, move(self.tokens), move(self.positions),
                    move(self.labels), move(self.weights))

    def split(self, values: Tensor) -> list[Tensor]:
        """Per-position ``values`` [1, T] (or [T]) -> one tensor per document, in ``rows`` order."""
        flat = values.reshape(-1)
        bounds = self.cu_seqlens.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(self.rows))]


def document_lengths(rows: Sequence[Sequence[int]], labels: bool) -> list[int]:
    """Positions each row takes in a pack: len − 1 for a log-prob pass (the last token is only a label),
    len for a reward model's."""
    return [len(r) - 1 if labels else len(r) for r in rows]


def assign(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit-decreasing: which documents (indices into ``lengths``) go into which pack, none over
    ``budget`` positions. Ties keep input order, so the result depends on the lengths only."""
    if lengths and max(lengths) > budget:
        raise ValueError(f"a row of {max(lengths)} positions exceeds the token budget {budget}")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), len(packs))
        if j == len(packs):
            packs.append([])
            room.append(budget)
        packs[j].append(i)
        room[j] -= lengths[i]
    return [sorted(p) for p in packs]  # input order inside a pack: the layout is easier to read back


def pack_rows(rows: Sequence[Sequence[int]], budget: int, *, labels: bool = True, pad_id: int = 0,
              weights: Tensor | None = None, multiple_of: int = 1, same_size: bool = False) -> list[Pack]:
    """``rows`` packed under ``budget`` positions per pack.

    ``labels``: a log-prob pass (inputs row[:-1], labels row[1:]); else a reward model's (inputs the whole
    row, no labels). ``weights``: fp32 [n, width ≥ longest document] per-label loss weights (a right-padded
    train/weights.py table), laid out with the labels. ``multiple_of``: each pack's length is padded up
    to a multiple of it (the tensor-parallel size under sequence parallelism, which splits the sequence).
    ``same_size``: every pack padded to the longest (pipeline stages exchange one shape per pass)."""
    lengths = document_lengths(rows, labels)
    members_of = assign(lengths, budget)
    used_of = [sum(lengths[i] for i in members) for members in members_of]
    sizes = [used + (-used % multiple_of) for used in used_of]
    if same_size and sizes:
        sizes = [max(sizes)] * len(sizes)
    packs = []
    for members, used, size in zip(members_of, used_of, sizes):
        tokens = torch.full((1, size), pad_id, dtype=torch.long)
        label = torch.full((1, size), pad_id, dtype=torch.long) if labels else None
        weight = torch.zeros((1, size), dtype=torch.float32) if weights is not None else None
        positions = torch.zeros((1, size), dtype=torch.long)
        bounds = [0]
        for i in members:
            start, n = bounds[-1], lengths[i]
            row = torch.tensor(rows[i], dtype=torch.long)
            tokens[0, start : start + n] = row[:n]
            positions[0, start : start + n] = torch.arange(n)
            if labels:
                label[0, start : start + n] = row[1:]
            if weight is not None:
                weight[0, start : start + n] = weights[i, :n]
            bounds.append(start + n)
        if size > used:  # the padding tail: a document of its own, positions from 0 like any other
            positions[0, used:] = torch.arange(size - used)
            bounds.append(size)
        seqlens = [b - a for a, b in zip(bounds, bounds[1:])]
        packs.append(Pack(members, torch.tensor(bounds, dtype=torch.int32), max(seqlens), tokens, positions,
                          label, weight))
    return packs


def padded_microbatches(rows: Sequence[Sequence[int]], micro_batch_size: int, *, pad_id: int, weights: Tensor,
                        multiple_of: int = 1) -> list[Pack]:
    """The unpacked layout of a training pass: rows right-padded to one width (causal attention: padding
    after a row cannot change it) whose width − 1 input positions are a multiple of ``multiple_of``, in
    microbatches of ``micro_batch_size`` rows; ``weights`` as in ``pack_rows``."""
    width = max(len(r) for r in rows)
    width += -(width - 1) % multiple_of
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    weight = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    weight[:, : min(width - 1, weights.shape[1])] = weights[:, : width - 1]
    positions = torch.arange(width - 1).expand(len(rows), width - 1)
    return [Pack(list(range(i, min(i + micro_batch_size, len(rows)))), None, width - 1,
                 tokens[i : i + micro_batch_size, :-1], positions[i : i + micro_batch_size],
                 tokens[i : i + micro_batch_size, 1:], weight[i : i + micro_batch_size])
            for i in range(0, len(rows), micro_batch_size)]


def unpack(packs: Sequence[Pack], outputs: Sequence[Tensor], n: int) -> list[Tensor]:
    """Each pack's per-position output [1, T] (or [T]) back to its rows: ``n`` tensors in input order,
    row i's of its document's length."""
    out: list[Tensor | None] = [None] * n
    for pack, values in zip(packs, outputs):
        for i, part in zip(pack.rows, pack.split(values)):
            out[i] = part
    return out
