"""Rank bodies for LoRA on megatron-core: one DDP + Adam step of an adapted tiny GPT at a layout, and the
same model's loss with the adapters merged into plain weights (W + (alpha/r)·B·A, in plain torch)."""

from __future__ import annotations

import torch

from megatron_bond.config import LoraConfig
from megatron_bond.models.gpt import build_model
from megatron_bond.models.layout import gather_full, sharded_tensors
from megatron_bond.runtime import destroy_distributed, init_distributed
from tests.distributed.bodies import SEED, _run_schedule, adam_step, batches, ddp_model, tiny_config

LORA = LoraConfig(rank=4, alpha=8.0)
TARGETS = {"linear_qkv": "self_attention", "linear_proj": "self_attention", "linear_fc1": "mlp", "linear_fc2": "mlp"}


def merged(full: dict[str, torch.Tensor], lora: LoraConfig) -> dict[str, torch.Tensor]:
    """Global tensors of the adapted model -> those of the plain model with the adapters merged."""
    out = {k: v for k, v in full.items() if ".lora_" not in k}
    for target, holder in TARGETS.items():
        key = f"decoder.layers.{holder}.{target}"
        # [layers, out, r] @ [layers, r, in], in fp64: the reference's own rounding is negligible
        delta = full[f"{key}.lora_b.weight"].double() @ full[f"{key}.lora_a.weight"].double()
        out[f"{key}.weight"] = (full[f"{key}.weight"].double() + lora.scale * delta).float()
    return out


@torch.no_grad()
def load_full(chunks, full: dict[str, torch.Tensor]) -> None:
    """The inverse of gather_full: every shard from the global tensors."""
    for sh in sharded_tensors(chunks):
        sh.data.copy_(full[sh.key][sh.global_slice()].reshape(sh.data.shape))


def lora_step(tp: int, pp: int, num_microbatches: int = 4) -> dict:
    """Loss, full gradients and parameters before / after one step of the adapted model (adapters from the
    layout-invariant init, so B ≠ 0 and both factors matter), the merged plain model's loss (TP=1 only),
    and which parameters the optimizer holds."""
    cfg = tiny_config(tp, pp, lora=LORA)
    init_distributed(cfg.parallel, seed=SEED)
    try:
        model = ddp_model(cfg)
        data = batches(num_microbatches, cfg.model.vocab_size)
        optimizer, before, loss, grads, ok, grad_norm = adam_step(model, data, clip_grad=0.0)
        names = {id(p): n for c in model for n, p in c.module.named_parameters()}
        trained = sorted(names[id(p)] for g in optimizer.param_groups for p in g["params"])
        out = {"loss": loss.item(), "grads": grads, "before": before, "after": gather_full(model), "ok": ok,
               "grad_norm": grad_norm, "trained": trained}
        if tp == pp == 1:
            plain = build_model(tiny_config(1, 1))
            load_full(plain, merged(before, LORA))
            out["merged_loss"] = _run_schedule(plain, data, forward_only=True).item()
        return out
    finally:
        destroy_distributed()


def lora_trainer(tp: int, pp: int) -> dict:
    """Two LoRA J-BOND steps of the tiny trainer with η = 1; then π_ref's samples (the base, adapters off)
    beside those of a plain model built from the same base, and the policy's beside the anchor's."""
    from megatron_bond.config import load_config
    from megatron_bond.models.layout import init_layout_invariant
    from megatron_bond.resolve import resolve_config
    from megatron_bond.rollout.engine import NativeEngine
    from megatron_bond.rollout.rollouts import Version
    from megatron_bond.train.samples import TRAINING_SAMPLING
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.step import train_step
    from tests.distributed.train_bodies import TINY

    overrides = [*TINY, f"parallel.tp={tp}", f"parallel.pp={pp}", "model.lora.rank=4", "bond.eta=1.0"]
    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", overrides))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        before = gather_full(t.policy)
        rows = [train_step(t, step) for step in (1, 2)]
        prompts = t.prompts.train[:4]

        def draw(engine, chunks, role):
            engine.refit(chunks, Version(role, 0))
            out = engine.sample(role, prompts, 2, TRAINING_SAMPLING, (7, "lora"), 0)
            engine.release()
            return out

        with t.ref.loaded_into(t.anchor) as ref_chunks:
            reference = draw(t.engine, ref_chunks, "reference")
        policy, anchor = draw(t.engine, t.policy, "policy"), draw(t.engine, t.anchor.chunks, "anchor")
        plain_cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", overrides[:-2]))
        plain = build_model(plain_cfg)
        init_layout_invariant(plain, cfg.run.seed)  # the base's keys, so the base's values
        base = draw(NativeEngine(plain_cfg, t.stop_ids, cfg.rollout.max_new_tokens, cfg.rollout.batch_size), plain, "reference")
        flat = lambda r: [x for lps in r.logprobs for lp in lps for x in lp]  # noqa: E731
        return {"rows": rows, "before": before, "after": gather_full(t.policy), "anchor": gather_full(t.anchor.chunks),
                **{name: (r.responses, flat(r)) for name, r in
                   (("reference", reference), ("base", base), ("policy", policy), ("anchor_samples", anchor))}}
    finally:
        destroy_distributed()
