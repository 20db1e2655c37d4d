"""Everything a training step needs, built from the config: the policy (megatron-core DDP, optimizer, LR
scheduler), the anchor and π_ref, the reward, the prompts and their order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_bond.bond.algorithms import Algorithm, algorithm_for
from megatron_bond.config import Config
from megatron_bond.models.gpt import unwrap
from megatron_bond.models.lora import init_adapters, share_base
from megatron_bond.models.tokenizer import load_text_side
from megatron_bond.phases import PhaseClock
from megatron_bond.resolve import uses_distributed_optimizer
from megatron_bond.rollout.engine import build_engine
from megatron_bond.runtime import DistEnv
from megatron_bond.train.anchor import Anchor, BaseReference, ReferenceWeights
from megatron_bond.train.data import PromptOrder, Prompts, load_prompts
from megatron_bond.train.rewards import build_reward
from megatron_bond.train.update import SkippedUpdates


@dataclass
class Trainer:
    """Everything a step uses. Saved in checkpoints (train/state.py): the policy's weights, the optimizer
    and LR scheduler, the anchor's fp32 shadow, the prompt order, the skipped-update counts. Rebuilt from
    the config at every start: the rest, π_ref (the policy checkpoint's weights, fingerprinted so a resume
    refuses a changed one) and the cache of π_ref's evaluation rewards (fixed seeds: the same values)."""

    # rebuilt from the config
    cfg: Config
    dist: DistEnv
    algorithm: Algorithm  # J-BOND, BOND or REINFORCE (megatron_bond/bond/algorithms.py), chosen once
    ref: ReferenceWeights | BaseReference
    reward: object
    prompts: Prompts
    stop_ids: tuple[int, ...]
    tokenizer: object | None
    # saved in checkpoints
    policy: list  # megatron-core DDP-wrapped model chunks
    optimizer: object
    scheduler: object
    anchor: Anchor
    order: PromptOrder
    skips: SkippedUpdates
    # per-phase seconds and CUDA peaks since the last metrics row
    clock: PhaseClock
    engine: object  # draws every rollout (rollout/engine.py): ``rollout.engine``
    # a cache, recomputed after a resume
    eval_ref_rewards: torch.Tensor | None = None  # π_ref's rewards on the held-out prompts


def _finalize_summed(model, num_tokens, **kwargs):
    """megatron-core's finalize_model_grads (data-parallel reduction, tied embeddings across stages)
    without its division by the token count: the per-token weights already carry the global 1/B."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model, None, **kwargs)


def _policy_chunks(cfg: Config) -> list:
    from megatron_bond.models.checkpoint import load_model_checkpoint
    from megatron_bond.models.gpt import build_model
    from megatron_bond.models.layout import init_layout_invariant

    if cfg.policy.ckpt:
        return load_model_checkpoint(cfg.policy.ckpt, cfg)
    chunks = build_model(cfg)
    init_layout_invariant(chunks, cfg.run.seed)  # the same tiny policy at every layout
    if cfg.model.lora.enabled:
        init_adapters(chunks, cfg.run.seed)  # B = 0: the policy starts as its base
    return chunks


def _optimizer(cfg: Config, model: list):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, bf16 = cfg.optimizer, cfg.model.params_dtype == "bfloat16"
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad, bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=uses_distributed_optimizer(cfg),
    ), model)
    steps = cfg.train.steps
    # One unit: optimizer steps. Step t (from 1) trains at the LR of num_steps = t (warm-up lr·t/W).
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=o.warmup_steps,
        lr_decay_steps=max(steps, o.warmup_steps + 1), lr_decay_style=o.decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=max(steps, 1), wd_incr_style="constant",
    )
    return optimizer, scheduler


def _wrap_ddp(cfg: Config, chunks: list) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    config = chunks[0].config  # shared by the chunks
    # Per-token-loss mode: the schedule does not divide by the number of microbatches and DDP sums over
    # data-parallel ranks (weights.py explains why the sum is right).
    config.calculate_per_token_loss = True
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=uses_distributed_optimizer(cfg))
    model = [DistributedDataParallel(config, ddp_config, chunk) for chunk in chunks]
    config.finalize_model_grads_func = _finalize_summed
    config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    return model


def build_trainer(cfg: Config, dist: DistEnv) -> Trainer:
    from megatron_bond.models.gpt import build_model
    from megatron.core import parallel_state as ps

    cfg.check_batch_split(dist.dp)
    text = load_text_side(cfg.policy.ckpt)
    # Every rank reads the prompts (the datasets cache is written once, by rank 0 first).
    if dist.rank == 0:
        prompts = load_prompts(cfg, text)
    torch.distributed.barrier()
    if dist.rank != 0:
        prompts = load_prompts(cfg, text)
    stop_ids = text.stop_ids(cfg.data.chat_template)
    reward = build_reward(cfg, stop_ids, text.tokenizer)
    # The engine before the policy: its refusals (vLLM missing, an unsupported model or layout) come before
    # the weights are built.
    engine = build_engine(cfg.rollout.engine, cfg, stop_ids, cfg.rollout.max_new_tokens, cfg.rollout.batch_size,
                          hf_dir=Path(cfg.policy.ckpt) / "hf" if cfg.policy.ckpt else None)
    policy = _wrap_ddp(cfg, _policy_chunks(cfg))
    optimizer, scheduler = _optimizer(cfg, policy)
    anchor_chunks = build_model(cfg, initialize=False)
    if cfg.model.lora.enabled:  # the anchor's base is the policy's; π_ref is that base, adapters off
        share_base(anchor_chunks, [unwrap(c) for c in policy])
    anchor = Anchor(anchor_chunks, policy, optimizer, ps.get_data_parallel_group())
    ref = BaseReference() if cfg.model.lora.enabled else ReferenceWeights(anchor)
    return Trainer(cfg=cfg, dist=dist, algorithm=algorithm_for(cfg.bond), policy=policy, optimizer=optimizer, scheduler=scheduler, anchor=anchor,
                   ref=ref, reward=reward, prompts=prompts,
                   order=PromptOrder(len(prompts.train), cfg.run.seed), stop_ids=stop_ids, tokenizer=text.tokenizer,
                   skips=SkippedUpdates(cfg.train.max_skipped_steps),
                   clock=PhaseClock(next(policy[0].parameters()).device), engine=engine)
