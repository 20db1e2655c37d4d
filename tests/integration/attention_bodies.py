"""One-rank body: megatron-bond's Gemma core attention against transformers' eager Gemma 2 attention."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron_bond.config import Config, ModelConfig, ParallelConfig
from megatron_bond.runtime import destroy_distributed, init_distributed

SEQ, BATCH, HEADS, DIM, WINDOW = 11, 2, 4, 8, 4


def _reference(q, k, v, scale, softcap, window):
    """transformers' eager attention with a causal (and sliding-window) mask built here from tril/triu."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    heads, groups = q.shape[2], k.shape[2]
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    if window:
        allowed &= torch.ones(SEQ, SEQ, dtype=torch.bool).triu(-(window - 1))
    mask = torch.zeros(SEQ, SEQ, dtype=q.dtype).masked_fill(~allowed, torch.finfo(q.dtype).min)
    module = SimpleNamespace(num_key_value_groups=heads // groups, training=False, head_dim=DIM)
    out, _ = eager_attention_forward(module, q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3),
                                     mask, scaling=scale, softcap=softcap)
    return out.transpose(0, 1).reshape(SEQ, BATCH, heads * DIM)  # [b, s, heads, dim] -> [s, b, heads*dim]


def compare(cases: list[tuple]) -> dict:
    """For each (query groups, softcap, window, dtype): max |ours - reference| for the whole sequence at once
    and for its last 3 and last 1 queries against every key (what a KV cache hands the attention during
    prefill chunks and decode steps), with the fp32 bound those differences must stay under."""
    init_distributed(ParallelConfig(), seed=0)
    try:
        return {case: _compare(*case) for case in cases}
    finally:
        destroy_distributed()


def _core_attention(groups: int, softcap: float | None, window: int | None, impl: str = "auto"):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_bond.models.gemma_layers import GemmaCoreAttention
    from megatron_bond.models.spec import transformer_config

    cfg = Config(
        parallel=ParallelConfig(),
        model=ModelConfig(family="gemma2", num_layers=1, hidden_size=HEADS * DIM, ffn_hidden_size=64,
                          num_attention_heads=HEADS, num_query_groups=groups, kv_channels=DIM, vocab_size=64,
                          max_seq_length=SEQ, attn_logit_softcap=softcap, sliding_window=window,
                          layer_types=["sliding_attention" if window else "full_attention"],
                          query_pre_attn_scalar=16.0, attention_impl=impl),
    ).validate()
    return GemmaCoreAttention(transformer_config(cfg), 1, attn_mask_type=AttnMaskType.causal,
                              attention_type="self", softmax_scale=16.0**-0.5)


def _compare(groups: int, softcap: float | None, window: int | None, dtype: str, impl: str) -> dict:
    attention = _core_attention(groups, softcap, window, impl)
    gen = torch.Generator().manual_seed(groups)
    q = (torch.randn(SEQ, BATCH, HEADS, DIM, generator=gen) * 3).to(getattr(torch, dtype))
    k, v = ((torch.randn(SEQ, BATCH, groups, DIM, generator=gen) * 3).to(q.dtype) for _ in range(2))
    ref = _reference(q, k, v, 16.0**-0.5, softcap, window)
    diffs = {last: (attention(q[-last:], k, v, None) - ref[-last:]).float().abs().max().item()
             for last in (SEQ, 3, 1)}
    return {**diffs, "bound": fp32_bound(q, k, v, 16.0**-0.5)}


def fp32_bound(q, k, v, scale: float) -> float:
    """How far two fp32 evaluations of the same attention may differ (different kernels, orders).

    A score is a dot product over DIM terms: it may move by DIM·u·Σ|q_d k_d|·scale ≤ DIM²·u·max|q|·max|k|·scale
    (the softcap c·tanh(s/c) is 1-Lipschitz and adds a few u·c). Softmax is 1-Lipschitz from the max-norm
    of the scores to the 1-norm of the probabilities up to a factor 2, so the output, a p-weighted sum of
    values, moves by 2·max|v|·δs; the sum itself over ≤ SEQ keys adds SEQ·u·max|v|.
    """
    u = 2.0**-24
    qmax, kmax, vmax = (t.float().abs().max().item() for t in (q, k, v))
    score_error = DIM * DIM * u * qmax * kmax * scale + 4 * u * 5.0
    return 2 * vmax * score_error + (SEQ + 4) * u * vmax


def packed(cases: list[tuple]) -> dict:
    """For each (softcap, window, impl): max |packed - alone| over the outputs and the q, k, v gradients of
    the layer given megatron-core's THD layout (query [t, heads, dim], key and value [t, groups, dim],
    PackedSeqParams with cu_seqlens) against the same layer called on each document alone ([s, 1, ...])."""
    from megatron.core.packed_seq_params import PackedSeqParams

    init_distributed(ParallelConfig(), seed=0)
    out = {}
    try:
        for softcap, window, impl in cases:
            attention = _core_attention(2, softcap, window, impl)
            cu = torch.tensor([0, 4, 5, SEQ], dtype=torch.int32)
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=6,
                                     max_seqlen_kv=6)
            gen = torch.Generator().manual_seed(7)
            q = (torch.randn(SEQ, HEADS, DIM, generator=gen) * 3).requires_grad_()
            k, v = ((torch.randn(SEQ, 2, DIM, generator=gen) * 3).requires_grad_() for _ in range(2))
            whole = attention(q, k, v, None, packed_seq_params=params)
            alone = torch.cat([attention(q[a:e].unsqueeze(1), k[a:e].unsqueeze(1), v[a:e].unsqueeze(1), None)
                               for a, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
            w = torch.randn(alone.shape, generator=gen)
            grads = [torch.autograd.grad((o * w).sum(), (q, k, v)) for o in (whole, alone)]
            bound = fp32_bound(q, k, v, 16.0**-0.5)
            out[(softcap, window, impl)] = {
                "shape": list(whole.shape), "bound": bound,
                # a gradient entry sums at most SEQ queries' terms, each weighted by w like an output
                "grad_bound": SEQ * w.abs().max().item() * bound,
                "out": (whole - alone).abs().max().item(),
                "grads": max((a - b).abs().max().item() for a, b in zip(*grads)),
            }
        return out
    finally:
        destroy_distributed()
