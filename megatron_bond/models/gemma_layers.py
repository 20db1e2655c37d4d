"""The pieces Gemma needs that megatron-core's GPT layer spec lacks, as small modules for ModuleSpecs.

- ``GemmaRMSNorm``: RMSNorm computed in fp32 and scaled by (1 + w), as Hugging Face's Gemma does (the
  weight is stored as w, so HF <-> Megatron conversion copies it bit for bit); a reward model's final
  norm keeps the fp32 output (``GemmaRMSNormFp32Output``).
- ``GemmaCoreAttention``: attention per KV group (no per-head copies of keys and values) with Gemma 2's
  attention-logit softcap and sliding-window layers (Gemma 2 alternating, Gemma 3 by ``layer_types``),
  chosen by the global layer number.
- ``GemmaSelfAttention``: ``SelfAttention`` whose sliding-window layers use their own RoPE base
  (Gemma 3's ``rope_local_base_freq``), and whose static KV cache holds keys already rotated.
- ``post_normed(linear)``: a row-parallel linear followed by an RMSNorm of its output, for Gemma 2/3's
  post-attention and post-feed-forward norms (applied before the residual add).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.dot_product_attention import DotProductAttention

from megatron_bond.runtime.megatron_compat import RotatedCacheSelfAttention


class GemmaRMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fp32(x).type_as(x)

    def fp32(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], 1.0 + self.weight.float(), self.eps)


class GemmaRMSNormFp32Output(GemmaRMSNorm):
    """A reward model's final norm: its output stays fp32 for the scalar head. Rounded to bf16 (8
    significant bits), rewards would tie often, and J-BOND's strict < and first-wins argmax would turn the
    ties into systematic outcomes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fp32(x)


def _is_sliding(config, layer_number: int) -> bool:
    """``layer_number`` is Megatron's global, 1-based layer number."""
    types = config.layer_types
    return bool(types) and types[layer_number - 1] == "sliding_attention"


class GemmaCoreAttention(DotProductAttention):
    """Megatron's ``DotProductAttention`` interface with Gemma's attention: softcap before the mask,
    sliding windows, softmax in fp32. It attends per KV group: the query heads that share a KV head
    (Megatron's head order, h = group * heads_per_group + r) are rows of one matmul against that
    group's keys, so keys and values are never expanded per head (Megatron repeats them, over the
    whole KV cache at every decode step)."""

    def __init__(self, config, layer_number: int, *args, **kwargs):
        super().__init__(config, layer_number, *args, **kwargs)
        if config.apply_query_key_layer_scaling or self.attention_dropout.p:
            raise ValueError("Gemma attention has no query-key layer scaling and no attention dropout")
        self.cap = config.attn_logit_softcap
        self.window = config.sliding_window if _is_sliding(config, layer_number) else None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """``attention_mask``: None, or a bool [b, 1, sq, sk] (True: masked) of keys no query of a row may
        see (the left padding of a generation batch); the causal and window masks are this layer's own."""
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError("Gemma attention takes no attention bias and no packed sequences")
        sq, b, heads, dim = query.shape  # query [sq, b, heads, dim]; key, value [sk, b, groups, dim]
        if self.window is not None and key.size(0) > sq + self.window - 1:
            key, value = key[-(sq + self.window - 1):], value[-(sq + self.window - 1):]  # keys no query sees
        masked = None if attention_mask is None else attention_mask[..., -key.size(0):]
        sk, groups = key.size(0), key.size(2)
        q = query.permute(1, 2, 0, 3).reshape(b, groups, -1, dim)
        # Scores, softcap and mask in the model dtype and the softmax in fp32, as HF's eager attention:
        # an fp32 copy of every [b, heads, sq, sk] intermediate would cost training memory.
        scores = torch.matmul(q, key.permute(1, 2, 3, 0)).view(b, heads, sq, sk) * self.softmax_scale
        if self.cap:
            scores = torch.tanh(scores / self.cap) * self.cap
        if sq > 1:  # one query (a decode step) sees every key left after the window cut, but padding
            causal = _causal_mask(sq, sk, self.window, query.device)
            masked = causal if masked is None else masked | causal
        if masked is not None:
            scores = scores.masked_fill(masked, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        context = torch.matmul(probs.view(b, groups, -1, sk), value.permute(1, 2, 0, 3))
        return context.view(b, heads, sq, dim).permute(2, 0, 1, 3).reshape(sq, b, heads * dim)


def _causal_mask(sq: int, sk: int, window: int | None, device: torch.device) -> torch.Tensor:
    """True where attention is not allowed: future keys, and keys beyond the window. The queries are
    the last ``sq`` of ``sk`` positions (a KV cache holds the earlier ones).

    Built per call and never cached: the mask is one bool per (query, key), while the scores it masks,
    allocated by the same call, are b·heads elements of at least 2 bytes per (query, key), so building
    it costs under 1/(2·b·heads) of the call's memory and time, and nothing outlives the call (a cache
    keyed by shape held gigabytes at 8k-token sequences)."""
    q = torch.arange(sk - sq, sk, device=device).unsqueeze(1)
    k = torch.arange(sk, device=device).unsqueeze(0)
    masked = k > q
    if window is not None:
        masked |= (q - k) >= window  # HF: a key is visible while q - k < sliding_window
    return masked.view(1, 1, sq, sk)


class GemmaSelfAttention(RotatedCacheSelfAttention):
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
