"""HF <-> Megatron conversion through the family's mapping table (single process, TP=1, PP=1).

HF -> Megatron streams one HF tensor at a time into the TP=1 model, then saves a distributed checkpoint
that loads at any TP/PP. Megatron -> HF loads any checkpoint (whatever layout saved it) at TP=1 and
streams the tensors out in 5 GiB safetensors shards. Either way the output appears only when complete.
The progress bars show on a terminal only (in a log file they would be one \r-joined line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_bond.config import Config, ConfigError, ParallelConfig
from megatron_bond.convert.gemma import rules_for
from megatron_bond.convert.hf_io import SafetensorsReader, SafetensorsWriter, copy_side_files
from megatron_bond.convert.lora_export import merge_adapters, write_peft
from megatron_bond.convert.mapping import VocabMismatch, expected_shapes, to_hf, to_megatron
from megatron_bond.convert.staging import staged_output
from megatron_bond.models.checkpoint import (
    first_non_finite,
    load_model_checkpoint,
    read_checkpoint_config,
    save_model_checkpoint,
)
from megatron_bond.models.hf_config import (
    is_vision_tensor,
    language_model_config,
    model_config_from_hf,
    read_hf_config,
)
from megatron_bond.models.tokenizer import read_text_side
from megatron_bond.runtime import destroy_distributed, init_distributed

# HF tensors that carry nothing the Megatron model lacks (tied output layer, RoPE caches).
_IGNORED_HF = ("lm_head.weight", "rotary_emb.inv_freq")


def _language_model_prefix(keys: set[str]) -> str:
    """Where the language model's tensors are: "model." in a causal LM, "language_model.model." (or
    transformers 5's "model.language_model.") in a multimodal Gemma 3."""
    for prefix in ("model.", "language_model.model.", "model.language_model."):
        if f"{prefix}embed_tokens.weight" in keys:
            return prefix
    raise ConfigError("the HF checkpoint has no embed_tokens.weight under model., language_model.model. or "
                      "model.language_model.: not a Gemma language model")


def _plan(reader: SafetensorsReader, cfg: Config, multimodal: bool = False):
    """(megatron key, hf keys, kind) for every tensor, checked against the HF files before any work.
    A multimodal checkpoint's tensors outside its language model (vision tower, projector) are left
    out, and said so."""
    m = cfg.model
    have = reader.keys()
    prefix = _language_model_prefix(have)

    def hf_key(key: str) -> str:  # the tables name the causal LM's keys ("model.", "lm_head.", "score.")
        return prefix + key[len("model."):] if key.startswith("model.") else key

    plan = [(mk, tuple(hf_key(k) for k in hk), rule.kind) for rule in rules_for(m) for mk, hk in rule.expand(m.num_layers)]
    if multimodal:
        outside = {k for k in have if is_vision_tensor(k)}  # anything else unmapped is still refused below
        print(f"multimodal checkpoint: converting its language model; the vision tower and projector "
              f"({len(outside)} tensors) are left out", flush=True)
        have = have - outside
    missing = sorted(k for _, hk, _ in plan for k in hk if k not in have)
    if missing:
        raise ConfigError(f"HF checkpoint lacks {len(missing)} tensors the {m.family} table needs, e.g. {missing[:3]}")
    used = {k for _, hk, _ in plan for k in hk}
    extra = sorted(k for k in have - used if not k.endswith(_IGNORED_HF))
    if extra:
        raise ConfigError(f"HF checkpoint has {len(extra)} tensors the {m.family} table does not map, e.g. {extra[:3]}")
    return plan


def _local(cfg: Config) -> Config:
    """The converters map the local spec's names (checkpoint keys are the same for both specs:
    models/keys.py), so they build it whatever the platform."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transformer_impl="local"))


def _mapped_shape(hf_dir: Path, raw: dict, kind: str, hf_keys, shapes, m) -> tuple[int, ...]:
    """The Megatron shape of HF tensors, or a one-line refusal when the config's sizes cannot map them
    (a config.json without num_attention_heads takes transformers' default, which the weights may not fit)."""
    try:
        return expected_shapes(kind, shapes, m)
    except VocabMismatch as err:
        said = "says" if "vocab_size" in raw else "has no vocab_size, so transformers' default"
        raise ConfigError(f"{hf_dir / 'config.json'} {said} vocab_size={m.vocab_size}, but {hf_keys[0]} has "
                          f"{shapes[0][0]} rows ({err}): set vocab_size to the tokenizer's size") from None
    except RuntimeError:
        raise ConfigError(f"{hf_dir / 'config.json'} does not match the weights: "
                          f"{', '.join(f'{k} {tuple(s)}' for k, s in zip(hf_keys, shapes))} cannot come from "
                          f"num_attention_heads={m.num_attention_heads}, num_key_value_heads={m.num_query_groups}, "
                          f"head_dim={m.kv_channels}, vocab_size={m.vocab_size}") from None


def _check_head_dim(hf_dir: Path, raw: dict, plan, reader: SafetensorsReader, m) -> None:
    """The projections show heads × head_dim only as a product, so a config.json without head_dim
    (transformers then takes its default) is refused unless a tensor shows the head dim alone: Gemma 3's
    q_norm, which is [head_dim]."""
    if "head_dim" in raw:
        return
    q_norm = [hk[0] for mk, hk, _ in plan if mk.endswith("self_attention.q_layernorm.weight")]
    if q_norm and reader.shape(q_norm[0]) == (m.kv_channels,):
        return
    raise ConfigError(f"{hf_dir / 'config.json'} has no head_dim, and the weights cannot tell the head count from "
                      f"the head dim (only their product shows): add head_dim (transformers would take "
                      f"{m.kv_channels})")


def _check_tokenizer(hf_dir: Path, vocab_size: int) -> None:
    """The tokenizer files travel with the checkpoint and text prompts need them later: a damaged one, or
    one with more ids than the embedding has rows, is refused now rather than at the first training run."""
    text = read_text_side(hf_dir)
    if text.tokenizer is not None and text.tokenizer.size() > vocab_size:
        raise ConfigError(f"{hf_dir}: the tokenizer has {text.tokenizer.size()} ids, the model's vocabulary "
                          f"{vocab_size}: not this model's tokenizer")


def hf_to_megatron(hf_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Config:
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ConfigError(f"{hf_dir} is not a directory")
    hf = read_hf_config(hf_dir)
    text_config, multimodal = language_model_config(hf)
    raw = hf["text_config"] if multimodal else hf  # what the file says, before transformers' defaults
    cfg = Config(model=model_config_from_hf(text_config)).validate()
    reader = SafetensorsReader(hf_dir)
    plan = _plan(reader, cfg, multimodal)
    _check_head_dim(hf_dir, raw, plan, reader, cfg.model)
    _check_tokenizer(hf_dir, cfg.model.vocab_size)
    with staged_output(out_dir, overwrite, inputs=(hf_dir,)) as tmp:
        init_distributed(ParallelConfig(), seed=cfg.run.seed)
        try:
            from megatron_bond.models.gpt import build_model

            (model,) = build_model(_local(cfg), initialize=False)
            params = model.state_dict(keep_vars=True)
            unset = set(k for k, v in params.items() if isinstance(v, torch.nn.Parameter))
            for mk, hk, kind in plan:  # every shape, before any copy or progress output
                if mk not in params:
                    raise ConfigError(f"the Megatron model has no tensor {mk} (mapping table out of date?)")
                shape = _mapped_shape(hf_dir, raw, kind, hk, [reader.shape(k) for k in hk], cfg.model)
                if shape != tuple(params[mk].shape):
                    raise ConfigError(f"{hf_dir / 'config.json'} does not match the weights: {hk[0]} maps to "
                                      f"shape {shape}, the config's model has {tuple(params[mk].shape)}")
            for mk, hk, kind in tqdm(plan, desc="HF -> Megatron", unit="tensor", disable=None):
                tensors = {k: reader.get(k) for k in hk}
                bad = first_non_finite(tensors)
                if bad is not None:
                    raise ConfigError(f"{hf_dir}: {bad} holds non-finite values (NaN or inf): nothing trains from "
                                      "it; fix or re-download the weights")
                with torch.no_grad():
                    params[mk].copy_(to_megatron(kind, list(tensors.values()), cfg.model))
                unset.discard(mk)
            unset = {k for k in unset if not k.startswith("output_layer.") or not cfg.model.tie_embeddings}
            if unset:
                raise ConfigError(f"no HF tensor maps to {sorted(unset)[:3]} (mapping table incomplete)")
            save_model_checkpoint([model], cfg, tmp)
        finally:
            destroy_distributed()
        copy_side_files(hf_dir, tmp / "hf", include_config=not multimodal)
        if multimodal:  # what the checkpoint now is: a text-only Gemma 3, which the exporter writes back
            (tmp / "hf" / "config.json").write_text(json.dumps(text_config, indent=2))
    return cfg


def megatron_to_hf(ckpt_dir: str | Path, out_dir: str | Path, overwrite: bool = False,
                   peft_dir: str | Path | None = None) -> Config:
    """A LoRA checkpoint's adapters are merged into the exported weights; ``peft_dir`` also writes them
    as a PEFT adapter directory for the base model."""
    cfg = read_checkpoint_config(ckpt_dir, ParallelConfig())
    hf_dir = Path(ckpt_dir) / "hf"
    if not (hf_dir / "config.json").is_file() and cfg.policy.ckpt:  # a training checkpoint: its run's source
        hf_dir = Path(cfg.policy.ckpt) / "hf"
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{ckpt_dir}: no hf/config.json beside the checkpoint (nor in its run's policy.ckpt) to "
                          "export with")
    if peft_dir is not None and not cfg.model.lora.enabled:
        raise ConfigError(f"--peft-dir: {ckpt_dir} holds no adapters (its model.lora.rank is 0)")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(staged_output(out_dir, overwrite, inputs=(ckpt_dir,)))
        peft_tmp = stack.enter_context(staged_output(peft_dir, overwrite, inputs=(ckpt_dir, out_dir))) if peft_dir else None
        init_distributed(cfg.parallel, seed=cfg.run.seed)
        try:
            (model,) = load_model_checkpoint(ckpt_dir, _local(cfg))
            params = model.state_dict()
            if cfg.model.lora.enabled:
                if peft_tmp is not None:
                    write_peft(params, cfg.model, peft_tmp)
                params = merge_adapters(params, cfg.model)
            writer = SafetensorsWriter(tmp)
            plan = [(mk, hk, r.kind) for r in rules_for(cfg.model) for mk, hk in r.expand(cfg.model.num_layers)]
            for mk, hk, kind in tqdm(plan, desc="Megatron -> HF", unit="tensor", disable=None):
                for name, tensor in zip(hk, to_hf(kind, params[mk], cfg.model)):
                    writer.add(name, tensor.clone())
            writer.close()
        finally:
            destroy_distributed()
        copy_side_files(hf_dir, tmp)
    return cfg
