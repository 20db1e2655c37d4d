"""Rank bodies that measure what megatron-core and the trainer allocate, for the memory planner's check."""

from __future__ import annotations

import torch

from megatron_bond.config import load_config
from megatron_bond.runtime import destroy_distributed, init_distributed

# A tiny Gemma 2 (post norms, softcaps) that is large enough for activations to be measured in MiB.
GEMMA2 = ["model.family=gemma2", "model.post_norms=true", "model.zero_centered_norm=true",
          "model.scale_embeddings=true", "model.activation=gelu_tanh", "model.attn_logit_softcap=50.0",
          "model.final_logit_softcap=30.0", "model.num_layers=4", "model.hidden_size=128",
          "model.ffn_hidden_size=256", "model.num_attention_heads=4", "model.num_query_groups=2",
          "model.kv_channels=32", "model.max_seq_length=512", "model.vocab_size=256",
          "logging.wandb_mode=disabled", "logging.progress=false", "data.num_prompts=32", "data.eval_size=4",
          "train.global_batch_size=4", "parallel.micro_batch_size=2"]


def allocated(tp: int, pp: int, overrides: list[str] = ()) -> dict:
    """Bytes this rank holds after one training step: policy weights, DDP's gradient buffer, Adam's
    state, the anchor's fp32 shadow and its own weights (under LoRA the adapters: the base is the
    policy's); and the planner's figures for the same rank."""
    from megatron.core import parallel_state as ps

    from megatron_bond.memory import adapter_params, stage_params
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.step import train_step

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*GEMMA2, f"parallel.tp={tp}", f"parallel.pp={pp}", *overrides]))
    dist = init_distributed(cfg.parallel, seed=0)
    try:
        t = build_trainer(cfg, dist)
        train_step(t, 1)
        opt = t.optimizer.chained_optimizers[0] if hasattr(t.optimizer, "chained_optimizers") else t.optimizer
        state = [v for s in opt.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
        n = stage_params(cfg.model, tp, pp, ps.get_pipeline_model_parallel_rank())
        a = adapter_params(cfg.model, tp, cfg.parallel.stage_layers(cfg.model.num_layers)[ps.get_pipeline_model_parallel_rank()])
        trained = a if cfg.model.lora.enabled else n
        policy = {p.data_ptr() for c in t.policy for p in c.parameters()}
        return {
            "weights": (sum(p.numel() * p.element_size() for c in t.policy for p in c.parameters()), 4 * (n + a)),
            "gradients": (sum(b.grad_data.numel() * b.grad_data.element_size() for c in t.policy for b in c.buffers), 4 * trained),
            "adam": (sum(v.numel() * v.element_size() for v in state), 8 * trained),
            "anchor_shadow": (sum(s.shadow.numel() * 4 for s in t.anchor.slots), 4 * trained),
            "anchor_weights": (sum(p.numel() * p.element_size() for c in t.anchor.chunks for p in c.parameters()
                                   if p.data_ptr() not in policy), 4 * trained),
        }
    finally:
        destroy_distributed()


def saved_activations(tp: int, seq: int, micro_batch: int) -> dict:
    """Bytes autograd saves for backward during one training forward of the layers (unique storages,
    parameters excluded), against the planner's activation_bytes for the same shape."""
    from megatron_bond.config import ParallelConfig
    from megatron_bond.memory import activation_bytes
    from megatron_bond.models.gpt import build_model

    cfg = load_config("recipes/tiny_cpu.yaml", [*GEMMA2, f"parallel.tp={tp}", f"model.max_seq_length={max(seq, 512)}"])
    init_distributed(ParallelConfig(tp=tp), seed=0)
    try:
        (model,) = build_model(cfg)
        params = {p.data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        tokens = torch.randint(4, 256, (micro_batch, seq))
        positions = torch.arange(seq).expand(micro_batch, seq)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.decoder(model.embedding(tokens, positions), attention_mask=None,
                          rotary_pos_emb=model.rotary_pos_emb(seq))
        return {"measured": sum(seen.values()),
                "planned": activation_bytes(cfg.model, tp, cfg.model.num_layers, seq, micro_batch)}
    finally:
        destroy_distributed()


def no_grad_peak(seq: int, batch: int) -> dict:
    """Peak of live tensor bytes (the CPU allocator's events) above the start of one no-grad forward of the
    layers (scoring, a prefill), against what the planner counts for it: no_grad_layer_bytes (one layer's
    intermediates at a time, on CPU; the layers' input exists before)."""
    from torch.profiler import ProfilerActivity, profile

    from megatron_bond.config import ParallelConfig
    from megatron_bond.memory import no_grad_layer_bytes
    from megatron_bond.models.gpt import build_model

    cfg = load_config("recipes/tiny_cpu.yaml", [*GEMMA2, f"model.max_seq_length={seq}"])
    init_distributed(ParallelConfig(), seed=0)
    try:
        (model,) = build_model(cfg)
        tokens = torch.randint(4, 256, (batch, seq))
        positions = torch.arange(seq).expand(batch, seq)
        with torch.no_grad():
            hidden = model.embedding(tokens, positions)
            rope = model.rotary_pos_emb(seq)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model.decoder(hidden, attention_mask=None, rotary_pos_emb=rope)
        level = peak = 0
        for e in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"):
            level += e[1]
            peak = max(peak, level)
        return {"measured": peak, "planned": no_grad_layer_bytes(cfg.model, 1, seq, batch, on_gpu=False)}
    finally:
        destroy_distributed()


# Sequences as long as the plan assumes: prompts of up to 9 tokens (BOS + 2..8) and 55 new tokens fill
# max_seq_length 64; one rollout group per step, so the generate batch is the planned one.
PHASE_SHAPE = ["model.max_seq_length=64", "data.max_prompt_tokens=9", "rollout.max_new_tokens=55",
               "rollout.batch_size=4", "rollout.score_batch_size=8"]


def phase_peaks(out_dir: str) -> dict:
    """Each phase's peak of live tensor bytes above its start (the CPU allocator's events in the profiler,
    inside the trainer's ``phase:<name>`` ranges), against the planner's bytes for the phase."""
    from pathlib import Path

    from megatron.core import parallel_state as ps
    from torch.profiler import ProfilerActivity, profile

    from megatron_bond.memory import Allocation, plan
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.evaluate import evaluate
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.state import CheckpointWriter, load_checkpoint
    from megatron_bond.train.step import train_step

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*GEMMA2, *PHASE_SHAPE, f"run.output_dir={out_dir}"]))
    dist = init_distributed(cfg.parallel, seed=0)
    try:
        t = build_trainer(cfg, dist)
        train_step(t, 1)  # lazily built state (Adam's moments, megatron-core's buffers) exists before we measure
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            train_step(t, 2)
            evaluate(t, 2)
            with t.clock.phase("checkpoint_save"):
                ckpt = CheckpointWriter(cfg, dist, ps.get_data_parallel_group(), Path(out_dir)).save(t, 2)
            with t.clock.phase("checkpoint_load"):
                load_checkpoint(t, ckpt)
        events = prof.profiler.kineto_results.events()
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        planned = plan(cfg, Allocation(1, 1, 1024.0), on_gpu=False)
        out = {}
        for e in events:
            if e.name().startswith("phase:"):
                start, end, level = e.start_ns(), e.end_ns(), 0
                before = sum(n for ts, n in allocations if ts < start)
                peak = 0
                for ts, n in allocations:
                    if start <= ts <= end:
                        level += n
                        peak = max(peak, level)
                out[e.name()[len("phase:"):]] = {"measured": peak, "planned": sum(planned.phases[e.name()[6:]].values()),
                                                 "before": before}
        return out
    finally:
        destroy_distributed()
