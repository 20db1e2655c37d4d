"""TransformerConfig and layer / block specs for every model family, composed from megatron-core's own.

The plain GPT family uses Megatron's specs unchanged. Gemma families take the same specs and swap in
the modules of ``gemma_layers`` (norms, core attention, self-attention, post-normed projections).
``model.transformer_impl`` picks the local (plain-torch) spec or the Transformer Engine spec, where
Megatron's zero-centred-gamma RMSNorm is fused into the TE linears (``models/keys.py`` gives both specs'
tensors the same checkpoint keys). Gemma's core attention (softcap, sliding windows, packed documents) is
``GemmaCoreAttention`` on both (its path: ``model.attention_impl``).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_bond.config import Config, ConfigError
from megatron_bond.models.gemma_layers import (
    GemmaCoreAttention,
    GemmaRMSNorm,
    GemmaRMSNormFp32Output,
    GemmaSelfAttention,
    post_normed,
)
from megatron_bond.models.lora import apply_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "gelu": F.gelu}


@dataclass
class BondTransformerConfig(TransformerConfig):
    """Megatron's TransformerConfig plus the Gemma knobs it has no field for."""

    layer_types: Optional[list] = None  # per layer: "sliding_attention" or "full_attention"
    sliding_window: Optional[int] = None
    attn_logit_softcap: Optional[float] = None
    rope_local_theta: Optional[float] = None
    attention_impl: str = "auto"  # Gemma's core attention path (ModelConfig.attention_impl)


# parallel.recompute as megatron-core's TransformerConfig fields ("selective": its default module, core_attn).
RECOMPUTE = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    # Keep only each layer's input; recompute the rest in backward.
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


def te_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def use_transformer_engine(cfg: Config) -> bool:
    """model.transformer_impl resolved: "auto" takes TE wherever CUDA and TE are both present."""
    impl = cfg.model.transformer_impl
    if impl == "transformer_engine" and not te_available():
        raise ConfigError("model.transformer_impl: transformer_engine needs CUDA and Transformer Engine "
                          "(pip install -e '.[gpu]', or the NVIDIA PyTorch container); use local or auto")
    # Adapters wrap the local spec's linears (validate.py refuses an explicit transformer_engine with them).
    return impl == "transformer_engine" or (impl == "auto" and te_available() and not cfg.model.lora.enabled)


def attention_impl(cfg: Config) -> str:
    """model.attention_impl, refused where its path cannot train."""
    impl = cfg.model.attention_impl
    if impl == "flex" and not torch.cuda.is_available():
        raise ConfigError("model.attention_impl: flex needs CUDA (FlexAttention has no backward on CPU); "
                          "use auto or chunked")
    return impl


def transformer_config(cfg: Config) -> BondTransformerConfig:
    m, p = cfg.model, cfg.parallel
    dtype = DTYPES[m.params_dtype]
    on_gpu = torch.cuda.is_available()
    return BondTransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        sequence_parallel=p.sequence_parallel,
        num_layers_in_first_pipeline_stage=p.first_stage_layers,
        num_layers_in_last_pipeline_stage=p.last_stage_layers,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        layernorm_zero_centered_gamma=m.zero_centered_norm and use_transformer_engine(cfg),
        gated_linear_unit=True,
        activation_func=ACTIVATIONS[m.activation],
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        softmax_scale=m.query_pre_attn_scalar**-0.5 if m.query_pre_attn_scalar else None,
        qk_layernorm=m.qk_norm,
        layer_types=m.layer_types,
        sliding_window=m.sliding_window,
        attn_logit_softcap=m.attn_logit_softcap,
        rope_local_theta=m.rope_local_theta,
        attention_impl=attention_impl(cfg),
        # Fusions that megatron-core builds itself on CUDA (jit / its own kernels, with plain-torch
        # fallbacks); on CPU Megatron's plain-torch paths run. persist_layer_norm stays off: it is
        # apex's LayerNorm, and megatron-core's torch norms refuse it (seen on an H200).
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=on_gpu and m.activation == "silu",
        masked_softmax_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        # gloo has no batched isend/irecv sync semantics on CPU; per-op p2p is exact there.
        batch_p2p_comm=on_gpu,
        **RECOMPUTE[p.recompute],
    )


def _gemma_layer_spec(cfg: Config, te: bool) -> ModuleSpec:
    m = cfg.model
    spec = copy.deepcopy(
        get_gpt_layer_with_transformer_engine_spec(qk_layernorm=m.qk_norm)
        if te
        else get_gpt_layer_local_spec(qk_layernorm=m.qk_norm, normalization="RMSNorm")
    )
    layer = spec.submodules
    if not te:  # TE fuses these norms into its linears (zero-centred gamma from the config)
        layer.input_layernorm = GemmaRMSNorm
        layer.pre_mlp_layernorm = GemmaRMSNorm
    if m.lora.enabled:  # before post_normed: the post-norm takes the adapted output
        spec = apply_lora(spec, cfg)
        layer = spec.submodules
    attention = layer.self_attention
    attention.module = GemmaSelfAttention
    attention.submodules.core_attention = GemmaCoreAttention
    if m.qk_norm:
        attention.submodules.q_layernorm = GemmaRMSNorm
        attention.submodules.k_layernorm = GemmaRMSNorm
    if m.post_norms:
        attention.submodules.linear_proj = post_normed(attention.submodules.linear_proj)
        mlp = layer.mlp.submodules
        mlp.linear_fc2 = post_normed(mlp.linear_fc2)
    return spec


def decoder_spec(cfg: Config, num_layers_here: int):
    """The decoder's spec: Megatron's GPT layer spec, or for Gemma a block spec with this stage's
    ``num_layers_here`` Gemma layers and the (1 + w) final norm."""
    te = use_transformer_engine(cfg)
    if cfg.model.family == "gpt":
        if te:
            return get_gpt_layer_with_transformer_engine_spec()
        if cfg.parallel.sequence_parallel:
            raise ConfigError("parallel.sequence_parallel: the gpt family's local spec uses megatron-core's torch "
                              "norms, which do not support it; use model.transformer_impl=transformer_engine")
        layer = get_gpt_layer_local_spec(normalization="RMSNorm")
        if cfg.model.lora.enabled:
            layer = apply_lora(layer, cfg)
        # The final norm as the layers' (given a bare layer spec, megatron-core picks TE's wherever TE is
        # installed, and "local" would not be local).
        return TransformerBlockSubmodules(layer_specs=[layer] * num_layers_here,
                                          layer_norm=layer.submodules.input_layernorm)
    layer = _gemma_layer_spec(cfg, te)
    final_norm = GemmaRMSNormFp32Output if cfg.model.reward_head else GemmaRMSNorm  # fp32 into the scalar head
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers_here, layer_norm=final_norm)
