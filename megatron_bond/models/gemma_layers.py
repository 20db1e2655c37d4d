"""The pieces Gemma needs that megatron-core's GPT layer spec lacks, as small modules for ModuleSpecs.

- ``GemmaRMSNorm``: RMSNorm computed in fp32 and scaled by (1 + w), as Hugging Face's Gemma does (the
  weight is stored as w, so HF <-> Megatron conversion copies it bit for bit).
- ``GemmaCoreAttention``: Megatron's ``DotProductAttention`` plus Gemma 2's attention-logit softcap and
  sliding-window layers (Gemma 2 alternating, Gemma 3 by ``layer_types``), chosen by the global layer
  number.
- ``GemmaSelfAttention``: ``SelfAttention`` whose sliding-window layers use their own RoPE base
  (Gemma 3's ``rope_local_base_freq``).
- ``post_normed(linear)``: a row-parallel linear followed by an RMSNorm of its output, for Gemma 2/3's
  post-attention and post-feed-forward norms (applied before the residual add).
"""

from __future__ import annotations

import functools

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.dot_product_attention import DotProductAttention


class GemmaRMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)


def _is_sliding(config, layer_number: int) -> bool:
    """``layer_number`` is Megatron's global, 1-based layer number."""
    types = config.layer_types
    return bool(types) and types[layer_number - 1] == "sliding_attention"


class _SoftcapThenSoftmax(torch.nn.Module):
    """Wraps Megatron's scale-mask-softmax: cap·tanh(scores/cap) before the mask, as HF Gemma 2."""

    def __init__(self, inner: torch.nn.Module, cap: float):
        super().__init__()
        self.inner, self.cap = inner, cap

    def forward(self, scores, mask, *args, **kwargs):
        return self.inner(torch.tanh(scores / self.cap) * self.cap, mask, *args, **kwargs)


class GemmaCoreAttention(DotProductAttention):
    def __init__(self, config, layer_number: int, *args, **kwargs):
        super().__init__(config, layer_number, *args, **kwargs)
        cap = config.attn_logit_softcap
        if cap:
            self.scale_mask_softmax = _SoftcapThenSoftmax(self.scale_mask_softmax, cap)
        self.window = config.sliding_window if _is_sliding(config, layer_number) else None

    def forward(self, query, key, value, attention_mask, *args, **kwargs):
        sq, sk = query.shape[0], key.shape[0]
        mask = _causal_mask(sq, sk, self.window, query.device)
        if attention_mask is not None:
            mask = mask | attention_mask.bool()
        return super().forward(query, key, value, mask, *args, **kwargs)


@functools.lru_cache(maxsize=32)
def _causal_mask_cpu(sq: int, sk: int, window: int | None) -> torch.Tensor:
    q = torch.arange(sk - sq, sk).unsqueeze(1)  # absolute positions of the queries
    k = torch.arange(sk).unsqueeze(0)
    masked = k > q
    if window is not None:
        masked |= (q - k) >= window  # HF: a key is visible while q − k < sliding_window
    return masked.view(1, 1, sq, sk)


def _causal_mask(sq: int, sk: int, window: int | None, device) -> torch.Tensor:
    """True where attention is not allowed: future keys, and keys beyond the window."""
    return _causal_mask_cpu(sq, sk, window).to(device)


class GemmaSelfAttention(SelfAttention):
    def __init__(self, config, submodules, layer_number: int, *args, **kwargs):
        super().__init__(config, submodules, layer_number, *args, **kwargs)
        local_theta = config.rope_local_theta
        self.local_rope = None
        if local_theta and _is_sliding(config, self.layer_number):
            self.local_rope = RotaryEmbedding(
                kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=local_theta
            )

    def forward(self, hidden_states, *args, rotary_pos_emb=None, **kwargs):
        if self.local_rope is not None and rotary_pos_emb is not None:
            rotary_pos_emb = self.local_rope(rotary_pos_emb.shape[0])
        return super().forward(hidden_states, *args, rotary_pos_emb=rotary_pos_emb, **kwargs)


@functools.lru_cache(maxsize=None)
def post_normed(linear_cls: type) -> type:
    """``linear_cls`` (row-parallel, output replicated) followed by a GemmaRMSNorm of its output."""

    class PostNormed(linear_cls):
        def __init__(self, input_size, output_size, *, config, **kwargs):
            super().__init__(input_size, output_size, config=config, **kwargs)
            self.post_norm = GemmaRMSNorm(config, output_size, eps=config.layernorm_epsilon)

        def forward(self, x):
            out, bias = super().forward(x)
            return self.post_norm(out), bias

    PostNormed.__name__ = PostNormed.__qualname__ = f"PostNormed{linear_cls.__name__}"
    return PostNormed
