"""Hugging Face ``config.json`` -> ``ModelConfig`` for the Gemma families (and back, for export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_bond.config import ConfigError, ModelConfig

FAMILIES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "silu": "silu"}
TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{hf_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: expected a JSON object, got a {type(hf).__name__}")
    missing = [k for k in REQUIRED if not isinstance(hf.get(k), int)] if hf.get("model_type") in FAMILIES else []
    if missing:
        raise ConfigError(f"{path}: missing or non-integer {', '.join(repr(k) for k in missing)}")
    return hf


def _rope(hf: dict, layer_type: str) -> dict:
    """RoPE settings of one layer type, from transformers 5's ``rope_parameters`` or older keys."""
    params = hf.get("rope_parameters") or {}
    if layer_type in params:
        return params[layer_type]
    if "rope_theta" in params:
        return params
    out = {"rope_theta": hf.get("rope_theta", 10000.0)}
    if layer_type == "sliding_attention" and hf.get("rope_local_base_freq"):
        out = {"rope_theta": hf["rope_local_base_freq"]}
    elif layer_type == "full_attention" and hf.get("rope_scaling"):
        out.update(hf["rope_scaling"])
    return out


def _layer_types(hf: dict, family: str) -> list[str] | None:
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    if family == "gemma2":  # even layers slide (HF: layer_idx % 2 == 0)
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if family == "gemma3":
        pattern = hf.get("sliding_window_pattern", 6)
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    return None


def model_config_from_hf(hf: dict) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported: supported are {', '.join(FAMILIES)} "
            "(for Gemma 3 multimodal checkpoints, convert the text model)"
        )
    family = FAMILIES[model_type]
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ACTIVATIONS:
        raise ConfigError(f"hidden activation {act!r} is not supported")
    is_classifier = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
    if is_classifier and hf.get("num_labels", len(hf.get("id2label") or {0: 0})) != 1:
        raise ConfigError("reward models need num_labels = 1")
    layer_types = _layer_types(hf, family)
    full = _rope(hf, "full_attention")
    scaling = None
    if full.get("rope_type", "default") == "linear":
        scaling = float(full["factor"])
    elif full.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_type {full['rope_type']!r} is not supported")
    local = _rope(hf, "sliding_attention") if family == "gemma3" else None
    return ModelConfig(
        family=family,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=hf["num_attention_heads"],
        num_query_groups=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        kv_channels=hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
        vocab_size=hf["vocab_size"],
        max_seq_length=hf.get("max_position_embeddings", 8192),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        params_dtype=TORCH_DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), "float32"),
        activation=ACTIVATIONS[act],
        norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        zero_centered_norm=True,
        scale_embeddings=True,
        rope_theta=float(full.get("rope_theta", 10000.0)),
        rope_local_theta=float(local["rope_theta"]) if local else None,
        rope_scaling_factor=scaling,
        sliding_window=hf.get("sliding_window") if layer_types else None,
        layer_types=layer_types,
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        qk_norm=family == "gemma3",
        post_norms=family in ("gemma2", "gemma3"),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        reward_head=is_classifier,
        pad_token_id=hf.get("pad_token_id") or 0,
    )
