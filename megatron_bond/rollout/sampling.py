"""Token sampling from vocab-parallel logits: temperature, top-k, top-p (nucleus), greedy.

Each tensor-parallel rank holds the logits of its vocabulary shard; no rank gathers [b, V] except for
top-p (a nucleus needs the whole sorted distribution). A sample is the Gumbel-max of the filtered
logits / T, exact for the softmax at any temperature, with noise keyed on (seed, row, position, global
token id) by a counter-based hash: the same token wins whichever shard holds it, so TP=1 and TP=2 draw
the same tokens from the same logits, and a row's draws do not depend on the rows beside it. Each rank
sends one [b, 4] summary of its shard (best score, its token id and logit, the shard's log Σ exp) in
one all-gather and every rank combines them identically.

The log-prob reported for a sampled token is the model's log softmax(logits) at that token, before the
temperature and top-k / top-p (vLLM's "raw" log-probs, so that both engines report the same number): the
log π(y_t) that the scorer and the BOND losses use, whatever the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.config import ConfigError

MASK64 = (1 << 64) - 1
# Rows are sampled in blocks of about this many logits, so that sampling needs at most
# BLOCK_ELEMENTS × SAMPLER_BYTES_PER_LOGIT = 224 MiB beyond the logits whatever the batch (the memory
# planner counts it). Bytes per logit of a block at the peak, while the noise is hashed: the fp32 logits
# / T (4), the top-k-masked copy (4), its fp64 copy waiting for the noise (8), and the hash's three live
# int64 words (24) = 40; the fp64 uniform and its logs come after the words are freed (≤ 32). Measured
# 44–48.2 on CPU (tests/unit/test_sampling.py); 56 leaves one fp64 word for the order of frees.
BLOCK_ELEMENTS = 2**22
SAMPLER_BYTES_PER_LOGIT = 56


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ConfigError("temperature must be > 0 (use greedy for argmax decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p must lie in (0, 1]")
        if self.top_k < 0:
            raise ConfigError("top_k must be >= 0")


@dataclass(frozen=True)
class Shard:
    """Which part of the vocabulary a rank's logits cover, and the group that holds the rest (None: one
    rank holds all of it). Ids at or past ``vocab_size`` are the padded vocabulary and never drawn."""

    start: int = 0
    vocab_size: int | None = None
    group: object = None


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 that has its bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


MIX = (_signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB))  # splitmix64's finaliser constants


def _shr(x, k: int):
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x):
    """splitmix64's finaliser, a bijection of 64-bit words with full avalanche, on int64 tensors or Python
    ints. Multiplication wraps modulo 2⁶⁴ (two's complement), as torch's int64 kernels do on CPU and
    CUDA; tests/unit/test_sampling.py checks it against Python's exact integers."""
    x = (x ^ _shr(x, 30)) * MIX[0]
    if isinstance(x, int):
        x = _signed(x & MASK64)
    x = (x ^ _shr(x, 27)) * MIX[1]
    if isinstance(x, int):
        x = _signed(x & MASK64)
    return x ^ _shr(x, 31)


def gumbel_noise(seed: int, rows: Tensor, position: int, token_ids: Tensor) -> Tensor:
    """Standard Gumbel noise [len(rows), len(token_ids)] in fp64, a pure function of (seed, row, position,
    token id): one 64-bit hash per token, of which 52 bits make the uniform (with 32, the discretisation
    alone would move up to V·2⁻³² of probability at a 256k vocabulary). 52, not 53: (2⁵³ − 1 + ½)·2⁻⁵³
    rounds to 1.0 in fp64, whose noise is +inf and −inf + inf a NaN that would win the argmax; every
    (j + ½)·2⁻⁵² with j < 2⁵² is exact and lies in (0, 1)."""
    key = mix64(_signed((mix64(_signed(seed & MASK64)) ^ position) & MASK64))
    row_key = mix64(rows.long().unsqueeze(-1) ^ key)
    return -torch.log(-torch.log(uniform(mix64(row_key ^ token_ids.long().unsqueeze(0)))))


def uniform(h: Tensor) -> Tensor:
    """The top 52 bits of 64-bit words as fp64 uniforms (j + ½)·2⁻⁵², exactly inside (0, 1)."""
    return (_shr(h, 12).double() + 0.5) * 2.0**-52


def filtered_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits / T with everything outside the top-k and the top-p nucleus set to −inf: [b, V] fp32."""
    z = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(z, min(params.top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_z, dim=-1) >= params.top_p  # keep the token that crosses top_p
        z = z.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return z


def _all_gather(x: Tensor, group) -> Tensor:
    """[ranks, *x.shape]: every rank's x, in rank order."""
    size = torch.distributed.get_world_size(group)
    out = [torch.empty_like(x) for _ in range(size)]
    torch.distributed.all_gather(out, x.contiguous(), group=group)
    return torch.stack(out)


def sample(logits: Tensor, params: SamplingParams, seed: int, position: int,
           shard: Shard = Shard()) -> tuple[Tensor, Tensor]:
    """(token ids [b], their log-probs [b] under softmax(logits)) from this rank's shard of the logits
    [b, V_shard]; rows are numbered 0 … b − 1 for the noise, and every rank of the group returns the same."""
    group = shard.group if shard.group is not None and torch.distributed.get_world_size(shard.group) > 1 else None
    if params.top_p < 1.0 and group is not None:  # the nucleus needs the whole distribution: gather it once
        full = _all_gather(logits, group)
        return sample(torch.cat(list(full), dim=-1), params, seed, position, Shard(0, shard.vocab_size))
    b, width = logits.shape
    ids = torch.arange(shard.start, shard.start + width, device=logits.device)
    # fp32 logits / T (greedy: T = 1); the padded vocabulary never wins. ``raw``: the logits the log-probs
    # come from, the same tensor at T = 1 (else each block is read again from ``logits``).
    padding = ids >= shard.vocab_size if shard.vocab_size is not None and shard.start + width > shard.vocab_size else None
    z = logits.float()
    scaled = not params.greedy and params.temperature != 1.0
    if scaled:
        z = z / params.temperature
    if padding is not None:
        z = z.masked_fill(padding, float("-inf"))
    kth = None
    if params.top_k and not params.greedy:  # the k-th largest of all shards' local top-k: [b, 1]
        local = torch.topk(z, min(params.top_k, width), dim=-1).values
        top = local if group is None else torch.cat(list(_all_gather(local, group)), dim=-1)
        kth = torch.topk(top, min(params.top_k, top.shape[-1]), dim=-1).values[..., -1:]
    rows = max(1, BLOCK_ELEMENTS // width)
    summary = torch.cat([_summary(z[i : i + rows], logits[i : i + rows] if scaled else None, padding, i, ids,
                                  params, seed, position, None if kth is None else kth[i : i + rows])
                         for i in range(0, b, rows)])
    summary = summary.unsqueeze(0) if group is None else _all_gather(summary, group)  # [ranks, b, 4] fp64
    winner = summary[..., 0].max(dim=0).indices  # ties: the lowest shard, i.e. the lowest token id
    pick = summary.gather(0, winner.view(1, b, 1).expand(1, b, 4)).squeeze(0)
    log_norm = torch.logsumexp(summary[..., 3], dim=0)  # of the shards' log Σ exp (−inf: padding only)
    return pick[:, 1].long(), (pick[:, 2] - log_norm).float()


def _summary(z: Tensor, raw: Tensor | None, padding: Tensor | None, first_row: int, ids: Tensor,
             params: SamplingParams, seed: int, position: int, kth: Tensor | None) -> Tensor:
    """A block of rows of this shard, [rows, 4] fp64: the best score (greedy: the logit; else the filtered
    logit / T plus its Gumbel noise, fp64 so that the noise's 52 bits count), its global token id, its
    raw logit, and the shard's log Σ exp of the raw logits (``raw``: the block of the input logits; None:
    ``z`` is them, T = 1)."""
    if raw is None:
        log_norm = torch.logsumexp(z, dim=-1).double()
    else:  # an fp32 copy of the block, freed before the noise's peak (the planner's bound holds)
        unscaled = raw.float() if padding is None else raw.float().masked_fill(padding, float("-inf"))
        log_norm = torch.logsumexp(unscaled, dim=-1).double()
        del unscaled
    if params.greedy:
        score = z
    else:
        kept = z if kth is None else z.masked_fill(z < kth, float("-inf"))
        kept = filtered_logits(kept, SamplingParams(top_p=params.top_p)) if params.top_p < 1.0 else kept
        rows = torch.arange(first_row, first_row + len(z), device=z.device)
        score = kept.double() + gumbel_noise(seed, rows, position, ids)
    best, at = score.max(dim=-1)  # the first maximum, as argmax
    logit = (z if raw is None else raw).gather(-1, at.unsqueeze(-1)).squeeze(-1).double()
    return torch.stack([best.double(), ids[at].double(), logit, log_norm], dim=-1)
