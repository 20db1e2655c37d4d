"""Attention whose memory is linear in the sequence length: Gemma's causal, sliding-window (Hugging Face's
exclusive bound: a key is visible while q − k < window), attention-logit-softcapped attention over grouped
keys, with a key padding mask (left-padded generation batches) and packed documents (a token sees only
its own document's keys). Three implementations of one contract, chosen per call by ``attention_path``:

- ``sdpa``: ``F.scaled_dot_product_attention(is_causal=True)`` where the call needs nothing it lacks (no
  softcap, no window shorter than the sequence, no mask, no documents, queries = keys): PyTorch's flash
  kernels on CPU and CUDA, forward and backward.
- ``flex``: FlexAttention (softcap as ``score_mod``; causal ∧ window ∧ same document ∧ not padding as a
  block mask), compiled, on CUDA for whole sequences only: on CPU torch 2.13 has no FlexAttention backward.
- ``chunked``: everywhere else (every CPU call with a softcap, window, mask or documents): query chunks in
  one autograd Function. A chunk's scores against the keys it may see (causal: none after its last query;
  window and documents: none before its first query's first visible key) are formed and softcapped in the
  model dtype, masked and soft-maxed whole in fp32 (the eager path's roundings), and backward recomputes them chunk by chunk from the saved inputs and
  the fp32 log-sum-exp. No [s, s] tensor exists; a chunk holds at most ``CHUNK_BUDGET_ELEMENTS`` scores.
- ``eager``: the reference (the project's first path, as HF's eager attention): [b, heads, sq, sk] scores
  and softcap in the model dtype, the mask, an fp32 softmax. Never chosen by "auto"; tests and benchmarks
  compare the others with it.

Layout: q [b, heads, sq, d], k and v [b, groups, sk, d] with heads = groups · r and head h reading group
h // r (Megatron's head order); the queries are the last sq of the sk positions (a KV cache holds the
earlier ones). ``mask``: None or bool, broadcastable to [b, 1, sq, sk], True where a key is hidden.
``cu_seqlens``: None or int [documents + 1] over the sk positions of a single row (b = 1, THD packing).
Output [b, heads, sq, d] in q's dtype.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

# fp32 scores per chunk: 16 MiB on CPU (a forward holds three such tensors, backward five), 256 MiB on CUDA.
CHUNK_BUDGET_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
PATHS = ("sdpa", "flex", "chunked", "eager")


def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, softcap: float | None = None,
              window: int | None = None, mask: Tensor | None = None, cu_seqlens: Tensor | None = None,
              impl: str = "auto", chunk: int | None = None) -> Tensor:
    """``impl``: "auto" (``attention_path``'s choice), or one of ``PATHS`` forced (tests, benchmarks);
    ``chunk``: queries per chunk of the chunked path (None: the budget's)."""
    path = attention_path(q, k, softcap, window, mask, cu_seqlens) if impl == "auto" else impl
    if path == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    if path == "eager":
        return eager(q, k, v, scale=scale, softcap=softcap, window=window, mask=mask, cu_seqlens=cu_seqlens)
    if path == "flex":
        return flex(q, k, v, scale=scale, softcap=softcap, window=window, mask=mask, cu_seqlens=cu_seqlens)
    if path != "chunked":
        raise ValueError(f"attention path {path!r}: expected auto or one of {', '.join(PATHS)}")
    docs = None if cu_seqlens is None else _doc_ids(cu_seqlens, k.size(2))
    return _ChunkedAttention.apply(q, k, v, scale, softcap, window, mask, docs, cu_seqlens, chunk)


def attention_path(q: Tensor, k: Tensor, softcap, window, mask, cu_seqlens) -> str:
    """The path ``attention`` takes for this call (module docstring)."""
    sq, sk = q.size(2), k.size(2)
    if not softcap and (window is None or window >= sk) and mask is None and cu_seqlens is None and sq == sk:
        return "sdpa"
    # On CUDA a whole sequence (training, scoring, a prefill) takes FlexAttention; a decode step's few
    # queries against a cache are one chunk of the chunked path, with no compilation per cache length.
    return "flex" if q.is_cuda and sq == sk else "chunked"


def _doc_ids(cu_seqlens: Tensor, sk: int) -> Tensor:
    """Document index of each of the sk positions (int64 [sk])."""
    cu = cu_seqlens.long()
    if cu[0] != 0 or cu[-1] != sk or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"packed attention: cu_seqlens {cu.tolist()} must rise from 0 to the {sk} packed tokens")
    return torch.repeat_interleave(torch.arange(len(cu) - 1, device=cu.device), cu[1:] - cu[:-1])


def _chunks(sq: int, sk: int, rows: int, window, docs, cu_seqlens, chunk, device) -> list[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1): each chunk of queries and the key span its queries may see (positions of the
    queries: off + q, off = sk − sq). ``rows``: b · heads, the scores one (query, key) pair costs."""
    off = sk - sq
    if chunk is None:
        budget = CHUNK_BUDGET_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]
        span = sk if window is None else min(sk, window + 63)  # a window's keys, plus a chunk's spread
        chunk = max(1, min(sq, budget // (rows * span)))
    starts = list(range(0, sq, chunk))
    firsts = torch.tensor([off + q0 for q0 in starts])
    lo = torch.zeros(len(starts), dtype=torch.long)
    if window is not None:
        lo = (firsts - window + 1).clamp(min=0)
    if docs is not None:  # the first query's document starts here; later queries' documents start later
        lo = torch.maximum(lo, cu_seqlens.long().cpu()[docs.cpu()[firsts]])
    return [(q0, min(q0 + chunk, sq), k0, off + min(q0 + chunk, sq)) for q0, k0 in zip(starts, lo.tolist())]


def _hidden(q0: int, q1: int, k0: int, k1: int, off: int, window, mask, docs, device) -> Tensor:
    """bool [b|1, 1, q1 − q0, k1 − k0]: True where the chunk's query may not see the key."""
    qpos = torch.arange(off + q0, off + q1, device=device).unsqueeze(1)
    kpos = torch.arange(k0, k1, device=device).unsqueeze(0)
    hidden = kpos > qpos
    if window is not None:
        hidden |= (qpos - kpos) >= window  # HF: a key is visible while q − k < sliding_window
    if docs is not None:
        hidden |= docs[off + q0: off + q1].unsqueeze(1) != docs[k0:k1].unsqueeze(0)
    hidden = hidden.view(1, 1, q1 - q0, k1 - k0)
    if mask is not None:
        hidden = hidden | (mask[..., q0:q1, k0:k1] if mask.size(-2) > 1 else mask[..., k0:k1])
    return hidden


def _scores(q: Tensor, k: Tensor, q0: int, q1: int, k0: int, k1: int, scale: float, softcap) -> tuple[Tensor, Tensor | None]:
    """fp32 scores [b, heads, q1 − q0, k1 − k0] of a chunk, softcapped, and tanh(s / cap) for backward
    (None without a softcap). The product, scale and softcap in the model dtype, as HF's eager attention
    (and the eager path) round them: in bf16 the two agree to the order of a kernel's sums, not merely to
    bf16's 8 bits of the scores; then fp32 for the mask and softmax."""
    b, heads, _, d = q.shape
    groups = k.size(1)
    qc = q[:, :, q0:q1].reshape(b, groups, -1, d)  # [b, g, r·cq, d]: the heads of a group are rows
    s = torch.matmul(qc, k[:, :, k0:k1].transpose(-1, -2)).view(b, heads, q1 - q0, k1 - k0) * scale
    acc = _acc(q)
    if not softcap:
        return s.to(acc), None
    t = torch.tanh(s / softcap)
    return (t * softcap).to(acc), t


def _acc(q: Tensor) -> torch.dtype:
    """The softmax's and the gradients' dtype: fp32, or the inputs' if wider (float64 in exactness tests)."""
    return torch.promote_types(q.dtype, torch.float32)


def _grouped(x: Tensor, y: Tensor) -> Tensor:
    """x [b, heads, cq, n] @ y [b, groups, n, m] per KV group -> [b, heads, cq, m]."""
    b, heads, cq, n = x.shape
    return torch.matmul(x.reshape(b, y.size(1), -1, n), y).view(b, heads, cq, y.size(-1))


class _ChunkedAttention(torch.autograd.Function):
    """The chunked path: saves q, k, v (model dtype) and the fp32 log-sum-exp of each query [b, heads, sq];
    backward recomputes each chunk's probabilities. dq of a chunk is whole after the chunk (its span holds
    every key its queries see); dk and dv accumulate over chunks in fp32 [b, groups, sk, d] (float64 for
    float64 inputs: ``_acc``)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, softcap, window, mask, docs, cu_seqlens, chunk):
        b, heads, sq, d = q.shape
        sk = k.size(2)
        mask = None if mask is None else mask[..., -sk:]
        spans = _chunks(sq, sk, b * heads, window, docs, cu_seqlens, chunk, q.device)
        out = q.new_empty(b, heads, sq, v.size(-1))
        lse = q.new_empty(b, heads, sq, dtype=_acc(q))
        for q0, q1, k0, k1 in spans:
            z, _ = _scores(q, k, q0, q1, k0, k1, scale, softcap)
            # The fp32 minimum, not −inf: a query that sees no key (the left padding of a generation
            # batch) gets finite garbage that nothing reads, never a NaN.
            z.masked_fill_(_hidden(q0, q1, k0, k1, sk - sq, window, mask, docs, q.device), torch.finfo(z.dtype).min)
            lse[:, :, q0:q1] = torch.logsumexp(z, dim=-1)
            p = z.sub_(lse[:, :, q0:q1].unsqueeze(-1)).exp_()
            # the probabilities rounded to the model dtype before the product, as the eager path
            out[:, :, q0:q1] = _grouped(p.to(v.dtype), v[:, :, k0:k1])
        ctx.save_for_backward(q, k, v, lse, mask, docs)
        ctx.args = (scale, softcap, window, spans)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, lse, mask, docs = ctx.saved_tensors
        scale, softcap, window, spans = ctx.args
        sq, sk = q.size(2), k.size(2)
        dq = torch.empty_like(q)
        acc = _acc(q)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        groups = k.size(1)
        for q0, q1, k0, k1 in spans:
            z, t = _scores(q, k, q0, q1, k0, k1, scale, softcap)
            z.masked_fill_(_hidden(q0, q1, k0, k1, sk - sq, window, mask, docs, q.device), torch.finfo(z.dtype).min)
            p = z.sub_(lse[:, :, q0:q1].unsqueeze(-1)).exp_()
            do = dout[:, :, q0:q1]
            dp = _grouped(do.to(acc), v[:, :, k0:k1].transpose(-1, -2).to(acc))  # dL/dp [b, heads, cq, span]
            # softmax backward, then the softcap's derivative 1 − tanh², then the scale: dL/d(q·k)
            ds = dp.sub_((p * dp).sum(-1, keepdim=True)).mul_(p)
            if t is not None:
                ds.mul_(t.to(acc).square_().neg_().add_(1.0))
            ds.mul_(scale)
            b, heads, cq, span = ds.shape
            dq[:, :, q0:q1] = _grouped(ds, k[:, :, k0:k1].to(acc)).to(dq.dtype)
            rows = ds.view(b, groups, -1, span).transpose(-1, -2)  # [b, g, span, r·cq]
            dk[:, :, k0:k1] += torch.matmul(rows, q[:, :, q0:q1].reshape(b, groups, -1, q.size(-1)).to(acc))
            dv[:, :, k0:k1] += torch.matmul(p.view(b, groups, -1, span).transpose(-1, -2),
                                            do.reshape(b, groups, -1, do.size(-1)).to(acc))
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None


@functools.cache
def _flex_attention(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


def flex(q: Tensor, k: Tensor, v: Tensor, *, scale: float, softcap=None, window=None, mask=None,
         cu_seqlens=None) -> Tensor:
    """The FlexAttention path: compiled on CUDA (where it has a backward and never forms [s, s]);
    uncompiled elsewhere, which forms the scores and serves only tests of its numerics (forward)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, heads, sq, _ = q.shape
    sk = k.size(2)
    off = sk - sq
    docs = None if cu_seqlens is None else _doc_ids(cu_seqlens, sk)
    mask = None if mask is None else mask[..., -sk:]

    def visible(bi, h, qi, ki):
        qpos = qi + off
        ok = ki <= qpos
        if window is not None:
            ok = ok & (qpos - ki < window)
        if docs is not None:
            ok = ok & (docs[qpos] == docs[ki])
        if mask is not None:
            ok = ok & ~mask[bi if mask.size(0) > 1 else 0, 0, qi if mask.size(-2) > 1 else 0, ki]
        return ok

    def capped(score, bi, h, qi, ki):
        return torch.tanh(score / softcap) * softcap

    block_mask = create_block_mask(visible, b if mask is not None and mask.size(0) > 1 else None, None, sq, sk,
                                   device=q.device, _compile=q.is_cuda)
    return _flex_attention(q.is_cuda)(q, k, v, score_mod=capped if softcap else None, block_mask=block_mask,
                                      scale=scale, enable_gqa=k.size(1) != heads)


def eager(q: Tensor, k: Tensor, v: Tensor, *, scale: float, softcap=None, window=None, mask=None,
          cu_seqlens=None) -> Tensor:
    """The reference path (module docstring): every [b, heads, sq, sk] intermediate at once."""
    b, heads, sq, d = q.shape
    groups, sk = k.size(1), k.size(2)
    docs = None if cu_seqlens is None else _doc_ids(cu_seqlens, sk)
    scores = torch.matmul(q.reshape(b, groups, -1, d), k.transpose(-1, -2)).view(b, heads, sq, sk) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    hidden = _hidden(0, sq, 0, sk, sk - sq, window, None if mask is None else mask[..., -sk:], docs, q.device)
    scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(b, groups, -1, sk), v).view(b, heads, sq, v.size(-1))
