"""A LoRA model's export: the adapters merged into the base (a plain HF model), or as a PEFT adapter
directory (``adapter_config.json`` + ``adapter_model.safetensors``) that ``peft`` loads onto the HF base.

Both start from the TP=1 state dict, where each adapted linear has W [out, in], A [r, in], B [out, r].
Merged: W + (alpha/r)·B·A, the product in fp32 and rounded once to W's dtype. PEFT: Megatron fuses
q, k, v (and gate, up) into one linear, HF keeps them apart; they share the fused linear's input, so
each HF projection gets the same A and its own rows of B, split by the very transform that splits W
(convert/mapping.py's ``to_hf``), and PEFT's scaling lora_alpha/r is the run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_bond.config import ModelConfig
from megatron_bond.convert.gemma import rules_for
from megatron_bond.convert.mapping import to_hf

PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the HF model's own keys


def _adapted(m: ModelConfig):
    """(megatron weight key, its HF keys, mapping kind, adapter key prefix) of every adapted linear."""
    targets = {f".{t}.weight" for t in m.lora.targets}
    for rule in rules_for(m):
        for mk, hk in rule.expand(m.num_layers):
            if any(mk.endswith(t) for t in targets):
                yield mk, hk, rule.kind, mk.removesuffix("weight")


def merge_adapters(params: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict of the plain model: adapted weights merged, adapter tensors dropped."""
    out = {k: v for k, v in params.items() if ".lora_" not in k}
    for mk, _, _, prefix in _adapted(m):
        w = params[mk]
        delta = params[f"{prefix}lora_b.weight"].float() @ params[f"{prefix}lora_a.weight"].float()
        out[mk] = (w.float() + m.lora.scale * delta).to(w.dtype)
    return out


def write_peft(params: dict[str, torch.Tensor], m: ModelConfig, out_dir: Path) -> None:
    tensors, modules = {}, set()
    for _, hk, kind, prefix in _adapted(m):
        a, b = params[f"{prefix}lora_a.weight"], params[f"{prefix}lora_b.weight"]
        for name, b_part in zip(hk, to_hf(kind, b, m)):
            base = PEFT_PREFIX + name.removesuffix(".weight")
            tensors[f"{base}.lora_A.weight"] = a.clone().contiguous()
            tensors[f"{base}.lora_B.weight"] = b_part.clone().contiguous()
            modules.add(name.removesuffix(".weight").rsplit(".", 1)[-1])
    save_file(tensors, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": m.lora.rank, "lora_alpha": m.lora.alpha,
              "lora_dropout": m.lora.dropout, "target_modules": sorted(modules), "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True, "base_model_name_or_path": None}
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))
