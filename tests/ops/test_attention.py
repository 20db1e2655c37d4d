"""ops/attention.py: every path against a brute-force float64 reference (forward and backward), packed
documents against each document alone, and the path switch (CUDA-only paths through stubs)."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from megatron_bond.ops import attention as attn

HEADS, DIM, SK = 4, 8, 13
CU = [0, 5, 6, 13]  # three documents, one of a single token
PAD = 2  # row 0 of a padded batch: its first PAD keys are left padding

# float64 throughout (the chunked path computes in the inputs' dtype when wider than fp32): every
# compared number is a sum of at most SK·DIM ≈ 100 products of factors below ~30 (|q|, |k|, |v| ≤ ~10 at
# 3σ, scale 0.35, softcap ≤ 5), each op adding a relative 2^-53 ≈ 1.1e-16, so two evaluations in any
# order differ by at most ~100 · 30 · 1e-16 · a few ≈ 1e-12; 1e-10 leaves a margin of 100 over that,
# while a wrong mask, window, document or softcap moves outputs and gradients by O(0.1 – 1).
TOL = 1e-10
# The eager path rounds the scores to fp32 for its softmax (HF's eager attention does): scores up to ~30
# move by 30 · 2^-24 ≈ 2e-6, an output (a p-weighted mean of values ≤ ~10) by 2 · 10 · 2e-6 plus the
# fp32 sum over SK keys, 13 · 6e-8 · 10: ≈ 5e-5 at most; 1e-4.
EAGER_TOL = 1e-4


def brute_force(q, k, v, scale, softcap, window, mask, cu):
    """Attention by definition, in float64: for each query position p (the last sq of sk) the keys j
    with j ≤ p, p − j < window, in p's document and not masked; softmax over those alone."""
    b, heads, sq, d = q.shape
    groups, sk = k.size(1), k.size(2)
    doc = [0] * sk if cu is None else [i for i in range(len(cu) - 1) for _ in range(cu[i], cu[i + 1])]
    visible = torch.zeros(b, 1, sq, sk, dtype=torch.bool)
    for r, i, j in itertools.product(range(b), range(sq), range(sk)):
        p = sk - sq + i
        visible[r, 0, i, j] = (j <= p and (window is None or p - j < window) and doc[p] == doc[j]
                               and not (mask is not None and bool(mask[min(r, mask.size(0) - 1), 0, 0, j])))
    kk = k.repeat_interleave(heads // groups, dim=1)
    vv = v.repeat_interleave(heads // groups, dim=1)
    s = q @ kk.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
    return p @ vv, visible.any(-1, keepdim=True)  # rows that see no key are not compared


def _inputs(b, groups, sq, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, HEADS, sq, DIM, generator=g, dtype=torch.float64) * 3
    k = torch.randn(b, groups, SK, DIM, generator=g, dtype=torch.float64) * 3
    v = torch.randn(b, groups, SK, DIM, generator=g, dtype=torch.float64) * 3
    return [t.requires_grad_() for t in (q, k, v)]


def _grads(out, seen, q, k, v, seed=1):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype) * seen
    return torch.autograd.grad((out * w).sum(), (q, k, v))


def _layout(kind):
    if kind == "packed":
        return 1, None, torch.tensor(CU, dtype=torch.int32)
    mask = None
    if kind == "padded":
        mask = torch.zeros(2, 1, 1, SK, dtype=torch.bool)
        mask[0, ..., :PAD] = True
    return 2, mask, None


CASES = list(itertools.product([1, 2, 4], [None, 5.0], [None, 4], ["plain", "padded", "packed"]))


@pytest.mark.parametrize("groups,softcap,window,kind", CASES)
def test_chunked_and_eager_match_brute_force(groups, softcap, window, kind):
    """Whole sequences, the last 3 queries and the last one (a KV cache), one query per chunk up to one
    chunk for all: forward and the gradients of q, k and v."""
    b, mask, cu = _layout(kind)
    for sq in (SK, 3, 1):
        q, k, v = _inputs(b, groups, sq)
        ref, seen = brute_force(q, k, v, 0.35, softcap, window, mask, None if cu is None else CU)
        ref_grads = _grads(ref, seen, q, k, v)
        for impl, chunk in (("chunked", 1), ("chunked", 4), ("chunked", None), ("eager", None)):
            out = attn.attention(q, k, v, scale=0.35, softcap=softcap, window=window, mask=mask, cu_seqlens=cu,
                                 impl=impl, chunk=chunk)
            assert torch.where(seen, out - ref, 0.0).abs().max() <= (EAGER_TOL if impl == "eager" else TOL), (impl, chunk, sq)
            if impl == "eager":  # its fp32 softmax makes float64 padding rows NaN; its backward is autograd's
                continue
            assert out.isfinite().all(), "a query that sees no key must give finite garbage, not NaN"
            for name, got, want in zip("qkv", _grads(out, seen, q, k, v), ref_grads):
                assert (got - want).abs().max() <= TOL * max(1.0, want.abs().max().item()), (impl, chunk, sq, name)


@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, 4)])
def test_packed_equals_each_document_alone(softcap, window):
    """A token attends only within its own document: each path over the packed row gives what it gives
    for each document on its own, outputs and gradients."""
    cu = torch.tensor(CU, dtype=torch.int32)
    for impl in ("chunked", "eager", "flex"):
        q, k, v = _inputs(1, 2, SK, seed=3)
        if impl == "flex":  # FlexAttention has no backward on CPU
            q, k, v = (t.detach() for t in (q, k, v))
        kw = dict(scale=0.35, softcap=softcap, window=window, impl=impl)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncompiled FlexAttention warns that it forms the scores
            packed = attn.attention(q, k, v, cu_seqlens=cu, **kw)
            alone = torch.cat([attn.attention(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], **kw)
                               for a, e in zip(CU[:-1], CU[1:])], dim=2)
        # float64 end to end for chunked; eager's and flex's fp32 softmax rounds both sides alike
        assert (packed - alone).abs().max() <= (TOL if impl == "chunked" else 1e-6), impl
        if impl != "flex":  # FlexAttention has no backward on CPU
            w = torch.randn(packed.shape, generator=torch.Generator().manual_seed(4), dtype=packed.dtype)
            for a, b in zip(torch.autograd.grad((packed * w).sum(), (q, k, v)),
                            torch.autograd.grad((alone * w).sum(), (q, k, v))):
                assert (a - b).abs().max() <= (TOL if impl == "chunked" else 1e-5) * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("groups,softcap,window,kind", [c for c in CASES if c[0] == 2])
def test_paths_in_fp32(groups, softcap, window, kind):
    """fp32 inputs (the model dtype of CPU runs): every path the switch can take against brute force.
    Bound: fp32's u = 6e-8 in place of float64's, the same ~100 · 30 · a few factor as TOL: 1e-3 · 0.1."""
    b, mask, cu = _layout(kind)
    q, k, v = (t.detach().float() for t in _inputs(b, groups, SK))
    ref, seen = brute_force(q.double(), k.double(), v.double(), 0.35, softcap, window, mask,
                            None if cu is None else CU)
    impls = ["chunked", "eager", "flex"] + (["sdpa"] if attn.attention_path(q, k, softcap, window, mask, cu) == "sdpa"
                                           else [])
    for impl in impls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = attn.attention(q, k, v, scale=0.35, softcap=softcap, window=window, mask=mask, cu_seqlens=cu,
                                 impl=impl)
        assert torch.where(seen, out.double() - ref, 0.0).abs().max() <= 1e-4, impl


class _OnCuda(torch.Tensor):
    """A CPU tensor that reports itself on CUDA: how the switch sees a GPU run."""

    @property
    def is_cuda(self):
        return True


def test_switch(monkeypatch):
    """auto: SDPA for a call that needs nothing else (any device), FlexAttention for the rest on CUDA
    (compiled), the chunked path for the rest on CPU; a forced impl is taken as given."""
    taken = []
    monkeypatch.setattr(attn, "flex", lambda q, k, v, **kw: taken.append(("flex", kw)) or q)
    monkeypatch.setattr(attn._ChunkedAttention, "apply", lambda q, *a: taken.append(("chunked", a)) or q)
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", lambda q, *a, **kw: taken.append(("sdpa", kw)) or q)
    q, k = torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 8, 8)
    cuda_q = q.as_subclass(_OnCuda)
    calls = [
        (q, {}, "sdpa"), (cuda_q, {}, "sdpa"),
        (q, {"softcap": 5.0}, "chunked"), (cuda_q, {"softcap": 5.0}, "flex"),
        (q, {"window": 4}, "chunked"), (cuda_q, {"window": 4}, "flex"),
        (q, {"window": 8}, "sdpa"),  # a window no shorter than the sequence hides nothing
        (q, {"mask": torch.zeros(1, 1, 1, 8, dtype=torch.bool)}, "chunked"),
        (q, {"cu_seqlens": torch.tensor([0, 8])}, "chunked"), (cuda_q, {"cu_seqlens": torch.tensor([0, 8])}, "flex"),
        (q[:, :, -1:], {}, "chunked"),  # a decode step: its query is not the first position
        (cuda_q[:, :, -1:], {"softcap": 5.0}, "chunked"),  # one chunk, nothing to compile per cache length
        (q, {"softcap": 5.0, "impl": "eager"}, None),
        (q, {"impl": "chunked"}, "chunked"),
    ]
    for query, kw, want in calls:
        taken.clear()
        attn.attention(query, k, k, scale=1.0, **kw)
        assert [t[0] for t in taken] == ([want] if want else []), (kw, taken)
    assert real_sdpa is not attn.F.scaled_dot_product_attention
    with pytest.raises(ValueError, match="attention path 'fast'"):
        attn.attention(q, k, k, scale=1.0, impl="fast")


def test_flex_compiles_on_cuda_only(monkeypatch):
    """FlexAttention is compiled (fused kernels, no [s, s] scores) where the inputs are on CUDA, and its
    block mask too; on CPU it runs uncompiled (tests of its numerics only)."""
    seen = {}
    import torch.nn.attention.flex_attention as fa

    real_mask = fa.create_block_mask
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **kw: seen.setdefault("mask", kw["_compile"]) and None
                        or real_mask(*a, **{**kw, "_compile": False}))
    monkeypatch.setattr(attn, "_flex_attention", lambda compiled: seen.setdefault("compiled", compiled) and None
                        or (lambda q, k, v, **kw: q))
    q = torch.zeros(1, 4, 8, 8)
    attn.flex(q.as_subclass(_OnCuda), q, q, scale=1.0, softcap=5.0)
    assert seen == {"mask": True, "compiled": True}
    seen.clear()
    attn.flex(q, q, q, scale=1.0, softcap=5.0)
    assert seen == {"mask": False, "compiled": False}


def test_bad_documents():
    q = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="cu_seqlens"):
        attn.attention(q, q, q, scale=1.0, cu_seqlens=torch.tensor([0, 5]), impl="chunked")
