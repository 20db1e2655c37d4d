"""The config a run trains with, resolved before any process group (by the trainer and the memory planner
alike): the policy checkpoint's architecture, the training dtype, the anchor's mode.

With ``policy.ckpt`` the architecture is the checkpoint's. Of the recipe's ``model`` keys, those that
choose how to run take effect (``transformer_impl``, ``attention_impl``; ``max_seq_length`` up to the checkpoint's); a key
that contradicts the checkpoint is refused, so a recipe written for another model says so instead of
training this one. A key left at the schema's default counts as not given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from megatron_bond.bond.algorithms import ALGORITHMS
from megatron_bond.config import Config, ConfigError, ModelConfig
from megatron_bond.config.validate import check_lora_fits, check_rollout_fits
from megatron_bond.rollout.vllm_engine import check_layout

RUN_CHOICES = ("transformer_impl", "attention_impl", "max_seq_length", "lora")  # how to run the checkpoint, not what it is
FROM_ELSEWHERE = ("params_dtype",)  # the training dtype is policy.dtype's, not the checkpoint's storage dtype


def _model_from_checkpoint(recipe: ModelConfig, ckpt_model: ModelConfig, ckpt: str) -> ModelConfig:
    default = ModelConfig()
    given = {f.name for f in dataclasses.fields(ModelConfig)
             if getattr(recipe, f.name) != getattr(default, f.name) and f.name not in FROM_ELSEWHERE}
    wrong = [name for name in sorted(given - set(RUN_CHOICES)) if getattr(recipe, name) != getattr(ckpt_model, name)]
    if wrong:
        name, more = wrong[0], f" (and {', '.join(f'model.{n}' for n in wrong[1:])})" if wrong[1:] else ""
        raise ConfigError(f"config: model.{name}: the recipe says {getattr(recipe, name)!r}, policy.ckpt {ckpt} "
                          f"has {getattr(ckpt_model, name)!r}{more}: add the override ~model (the checkpoint "
                          "decides the architecture) or use the checkpoint the recipe was written for")
    if "max_seq_length" in given and recipe.max_seq_length > ckpt_model.max_seq_length:
        raise ConfigError(f"config: model.max_seq_length: {recipe.max_seq_length} exceeds policy.ckpt {ckpt}'s "
                          f"{ckpt_model.max_seq_length}")
    return dataclasses.replace(ckpt_model, **{k: getattr(recipe, k) for k in RUN_CHOICES if k in given})


def _checkpoint_config(path: str, check: bool) -> Config:
    # megatron-core loads in seconds: only where a checkpoint is read (`config` without one stays quick)
    from megatron_bond.models.checkpoint import read_checkpoint_config

    return read_checkpoint_config(path, check=check)


def training_dtype(cfg: Config, on_gpu: bool) -> str:
    dtype = cfg.policy.dtype
    if dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    if dtype == "bfloat16" and not on_gpu:
        raise ConfigError("policy.dtype: bfloat16 training needs CUDA (megatron-core's mixed-precision "
                          "optimizer takes CUDA tensors only): use float32 on CPU")
    return dtype


def resolve_config(cfg: Config, on_gpu: bool | None = None, check: bool = True, absent: tuple[str, ...] = ()) -> Config:
    """``on_gpu``: where the run trains (None: this machine). ``check=False`` reads checkpoint configs
    without checking their tensors (the planner, on a machine without the weights); ``absent``: the
    checkpoints ("policy.ckpt", "reward.ckpt") not on this machine, checked through the recipe instead."""
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    model = cfg.model
    policy_here = cfg.policy.ckpt and "policy.ckpt" not in absent
    if policy_here:
        model = _model_from_checkpoint(cfg.model, _checkpoint_config(cfg.policy.ckpt, check).model,
                                       cfg.policy.ckpt)
    if cfg.checkpoint.export_hf and check and policy_here and not (Path(cfg.policy.ckpt) / "hf" / "config.json").is_file():
        raise ConfigError(f"checkpoint.export_hf: policy.ckpt {cfg.policy.ckpt} has no hf/config.json to export with "
                          "(a checkpoint converted by tools/convert_hf_to_megatron.py has one)")
    if cfg.reward.ckpt and "reward.ckpt" not in absent:  # checked here too, before any process group
        _checkpoint_config(cfg.reward.ckpt, check)
    if policy_here and _checkpoint_config(cfg.policy.ckpt, False).model.lora.enabled:
        raise ConfigError(f"policy.ckpt {cfg.policy.ckpt} holds adapters: a run trains on a base model (export "
                          "it merged with tools/convert_megatron_to_hf.py and convert that back)")
    if model.reward_head:
        raise ConfigError(f"policy.ckpt {cfg.policy.ckpt} is a reward model, not a causal LM")
    bond = cfg.bond
    if bond.anchor == "auto":  # the algorithm's first anchor mode
        bond = dataclasses.replace(bond, anchor=ALGORITHMS[bond.algorithm].anchor_modes[0])
    model = dataclasses.replace(model, params_dtype=training_dtype(cfg, on_gpu))
    # `~model` and a checkpoint on another machine: no architecture here to check (train checks it)
    unknown = "policy.ckpt" in absent and cfg.model == ModelConfig()
    resolved = dataclasses.replace(cfg, model=model, bond=bond).validate(architecture=not unknown)
    if not unknown:
        check_rollout_fits(resolved)
        check_lora_fits(resolved)
    return resolved


def resolve_present(cfg: Config, on_gpu: bool, check: bool = True) -> tuple[Config, tuple[str, ...]]:
    """What `train` checks before it builds a model, on any machine (`megatron-bond config`, the memory
    planner): ``resolve_config`` with the checkpoints that exist here, the engine's refusals of the config.
    A checkpoint that does not exist here (a login node, a recipe's placeholder path) is checked through
    the recipe's model section instead (the Gemma recipes spell out the released configs). Returns the
    resolved config and the keys of the checkpoints not found."""
    absent = tuple(key for key, path in (("policy.ckpt", cfg.policy.ckpt), ("reward.ckpt", cfg.reward.ckpt))
                   if path and not Path(path).exists())
    resolved = resolve_config(cfg, on_gpu=on_gpu, check=check, absent=absent)
    if resolved.rollout.engine == "vllm":
        check_layout(resolved)
    return resolved, absent


def uses_distributed_optimizer(cfg: Config) -> bool:
    """optimizer.distributed, resolved: on with CUDA unless turned off, refused without it."""
    import torch

    wanted = cfg.optimizer.distributed
    if wanted and not torch.cuda.is_available():
        raise ConfigError("optimizer.distributed needs CUDA (megatron-core's distributed optimizer refuses CPU tensors)")
    return torch.cuda.is_available() if wanted is None else wanted
