"""Hugging Face ``config.json`` -> ``ModelConfig`` for the Gemma families (and back, for export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_bond.config import ConfigError, ModelConfig

FAMILIES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh", "gelu": "gelu", "silu": "silu"}


def hf_activation(hf: dict, family: str) -> str:
    """The MLP activation exactly as transformers 5 reads it, per family (docs/conversion.md):
    Gemma reads ``hidden_act``, and the value "gelu" of the official Gemma 1 releases is a legacy name
    for the tanh approximation (transformers rewrites it, with a warning); Gemma 2 and 3 read
    ``hidden_activation``, where "gelu" means the exact (erf) GELU."""
    if family == "gemma":
        act = hf.get("hidden_act") or "gelu_pytorch_tanh"
        return "gelu_pytorch_tanh" if act == "gelu" else act
    return hf.get("hidden_activation") or "gelu_pytorch_tanh"


TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
INTEGER_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
_TOKENS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
# transformers' config-class defaults (GemmaConfig, Gemma2Config, Gemma3TextConfig) for every key read
# here. transformers fills in whatever a config.json leaves out from them, and some releases leave out
# much: the multimodal Gemma 3 releases store their text_config as a diff against Gemma3TextConfig (the
# 27B's has no vocab_size, rope_theta or max_position_embeddings).
HF_DEFAULTS = {
    "gemma": {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
              "max_position_embeddings": 8192, "rope_theta": 10000.0, **_TOKENS},
    "gemma2": {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192,
               "rope_theta": 10000.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, **_TOKENS},
    "gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131072, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10000.0,
                    "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                    "final_logit_softcapping": None, "attn_logit_softcapping": None, **_TOKENS},
}
_VISION = ("vision_tower.", "multi_modal_projector.")  # a multimodal Gemma 3's tensors outside its language model


def with_defaults(hf: dict) -> dict:
    """``hf`` with transformers' defaults for the keys it leaves out (known families only)."""
    return {**HF_DEFAULTS.get(hf.get("model_type"), {}), **hf}


def is_vision_tensor(key: str) -> bool:
    return any(part in key for part in _VISION)


def language_model_config(hf: dict) -> tuple[dict, bool]:
    """The complete config of the language model to convert, and whether the checkpoint is multimodal:
    Gemma 3 4B/12B/27B are released as Gemma3ForConditionalGeneration (model_type "gemma3", the language
    model's config nested as text_config); their language model is a text-only Gemma 3
    (Gemma3ForCausalLM, or Gemma3TextForSequenceClassification for a Gemma3ForSequenceClassification)."""
    if hf.get("model_type") != "gemma3" or not isinstance(hf.get("text_config"), dict):
        return with_defaults(hf), False
    text = dict(hf["text_config"])
    # Token ids, tying and dtype live at the top level of the releases (eos [1, 106]: end of turn too).
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "tie_word_embeddings", "torch_dtype", "dtype"):
        if key in hf and key not in text:
            text[key] = hf[key]
    classifier = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
    if classifier:
        text.update({k: hf[k] for k in ("num_labels", "id2label", "label2id") if k in hf})
    text.update(model_type="gemma3_text", architectures=[
        "Gemma3TextForSequenceClassification" if classifier else "Gemma3ForCausalLM"])
    # Gemma3ForConditionalGeneration never applies a final softcap (Gemma3ForCausalLM would).
    text["final_logit_softcapping"] = None
    return with_defaults(text), True


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
    text, _ = language_model_config(hf)
    bad = [k for k in INTEGER_KEYS if not isinstance(text.get(k), int)] if text.get("model_type") in FAMILIES else []
    if bad:
        raise ConfigError(f"{path}: non-integer {', '.join(f'{k!r} ({text.get(k)!r})' for k in bad)}")
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
            "and multimodal Gemma 3 (gemma3, whose language model is converted)"
        )
    family = FAMILIES[model_type]
    hf = with_defaults(hf)
    act = hf_activation(hf, family)
    if act not in ACTIVATIONS:
        raise ConfigError(f"hidden activation {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
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
