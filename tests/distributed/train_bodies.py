"""Rank bodies for the trainer: one real J-BOND step (rollouts, rewards, scoring, weights, Megatron's
schedule and optimizer, EMA) at a given layout, reported as global, layout-free tensors."""

from __future__ import annotations

import torch

from megatron_bond.config import load_config
from megatron_bond.models.layout import gather_full, params_as_grads
from megatron_bond.runtime import destroy_distributed, init_distributed

# The tiny recipe's model (2 layers, hidden 64, ffn 128, vocab 256) on a small batch.
TINY = ["train.global_batch_size=8", "rollout.max_new_tokens=8", "parallel.micro_batch_size=4", "data.num_prompts=64", "data.eval_size=8",
        "train.eval_ref_samples=4", "logging.wandb_mode=disabled", "logging.progress=false",
        "optimizer.lr=1e-3", "optimizer.warmup_steps=0", "optimizer.clip_grad=1.0"]
# Reordering bounds for it (tests/tolerances.py): the longest sum is a weight gradient's over the
# ≤ 16 × 17 tokens of a rank's sequences (TERMS = 272, above the vocabulary's 256); 9 chained sums per
# layer, 2 layers, then final norm, logits, normaliser and the sum over tokens (LOSS_DEPTH = 22), and
# back again plus the weight gradient's sum (GRAD_DEPTH = 45).
TERMS, LOSS_DEPTH, GRAD_DEPTH = 272, 22, 45


def one_step(tp: int, pp: int, overrides: list[str] = ()) -> dict:
    """Build the tiny trainer at this layout, run train_step once; return its metrics, the full policy
    parameters before and after, the gradients the optimizer used (clipped), and the anchor after."""
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.step import train_step

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*TINY, f"parallel.tp={tp}", f"parallel.pp={pp}",
                                                               *overrides]))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        before = gather_full(t.policy)
        row = train_step(t, step=1)
        with params_as_grads(t.policy):
            grads = gather_full(t.policy)
        return {"row": row, "before": before, "after": gather_full(t.policy), "grads": grads,
                "anchor": gather_full(t.anchor.chunks), "lr": row["lr"], "eps": cfg.optimizer.adam_eps}
    finally:
        destroy_distributed()


def bf16_anchor_tracks_fp32(steps: int = 50, eta: float = 0.02, gap: float = 0.01) -> dict:
    """The trainer's Anchor over bf16 Megatron models, fed by fp32 masters laid out as megatron-core's
    Float16OptimizerWithFloat16Params keeps them (that optimizer itself takes CUDA tensors only). The
    masters sit 1 % away from the anchor; after ``steps`` EMA updates, the fraction of the gap closed by
    the anchor's fp32 state, by the closed form of the fp32 recurrence and by the same EMA kept in bf16,
    and the largest distance of the anchor model's bf16 weights from the closed form in bf16 ulps."""
    from types import SimpleNamespace

    from megatron_bond.bond import ema_update_
    from megatron_bond.config import ParallelConfig
    from megatron_bond.models.gpt import build_model
    from megatron_bond.train.anchor import Anchor

    cfg = load_config("recipes/tiny_cpu.yaml", ["model.params_dtype=bfloat16"])
    init_distributed(ParallelConfig(), seed=cfg.run.seed)
    try:
        policy = build_model(cfg)
        # As megatron-core splits them: bf16 parameters get fp32 masters, fp32 ones (the plain GPT
        # family's torch norms) are their own.
        low = [p for p in policy[0].parameters() if p.dtype == torch.bfloat16]
        masters = [p.detach().float() for p in low]
        optimizer = SimpleNamespace(float16_groups=[low], fp32_from_float16_groups=[masters],
                                    fp32_from_fp32_groups=[[p for p in policy[0].parameters() if p.dtype == torch.float32]])
        anchor = Anchor(build_model(cfg, initialize=False), policy, optimizer)
        slots = [s for s in anchor.slots if s.target.dtype == torch.bfloat16]
        assert len(slots) == len(masters) > 0
        start = [s.shadow.clone() for s in slots]
        with torch.no_grad():
            for m in masters:
                m.mul_(1 + gap)  # the policy moved 1 % (in its fp32 masters)
        bf16 = [s.target.clone() for s in slots]  # what a bf16 EMA would start from
        for _ in range(steps):
            anchor.ema_(eta)
            ema_update_(bf16, [s.master.to(torch.bfloat16) for s in slots], eta)
        closed = [a + (1 - (1 - eta) ** steps) * (s.master - a) for a, s in zip(start, slots)]
        weights = [s.target.float() for s in slots]

        def closed_fraction(values):
            moved = sum((v.float() - a).abs().sum().item() for v, a in zip(values, start))
            return moved / sum((s.master - a).abs().sum().item() for a, s in zip(start, slots))

        ulps = max(((x - c).abs() / (torch.finfo(torch.bfloat16).eps * c.abs().clamp_min(1e-30))).max().item()
                   for x, c in zip(weights, closed))
        return {"fp32_anchor": closed_fraction([s.shadow for s in slots]), "bf16_ema": closed_fraction(bf16),
                "closed_form": closed_fraction(closed), "max_ulps_from_closed_form": ulps}
    finally:
        destroy_distributed()


def evaluation(overrides: list[str] = ()) -> dict:
    """The evaluation row at step 0 (no training) of the tiny trainer on this world."""
    from megatron_bond.train.evaluate import evaluate
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.setup import build_trainer

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*TINY, *overrides]))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        return evaluate(build_trainer(cfg, dist), 0)[0]  # the row
    finally:
        destroy_distributed()


def engine_refits(tp: int) -> dict:
    """The rollout engine around one training step: rollouts drawn before the update and used after it,
    an engine that missed a refit, and what each refit (policy, anchor, π_ref) draws with fixed seeds."""
    from megatron_bond.resolve import resolve_config
    from megatron_bond.rollout.rollouts import StaleRollout, Version
    from megatron_bond.train.samples import TRAINING_SAMPLING
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.step import train_step

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*TINY, f"parallel.tp={tp}"]))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)

    def refused(fn) -> bool:
        try:
            fn()
        except StaleRollout:
            return True
        return False

    try:
        t = build_trainer(cfg, dist)
        prompts = t.prompts.train[:4]
        draw = lambda role: t.engine.sample(role, prompts, 2, TRAINING_SAMPLING, (7, "test"), 0)  # noqa: E731
        t.engine.refit(t.policy, Version("policy", 0))
        t.engine.refit(t.anchor.chunks, Version("anchor", 0))
        before, anchor_before = draw("policy"), draw("anchor")
        row = train_step(t, 1)  # refits both at version 0 itself, then moves the policy and the anchor
        # The step refitted version 0, then released the engine: a draw that missed the refit is refused.
        stale = [refused(lambda: before.require(Version("policy", 1))),
                 refused(lambda: anchor_before.require(Version("anchor", 1))), refused(lambda: draw("policy"))]
        t.engine.refit(t.policy, Version("policy", 1))
        t.engine.refit(t.anchor.chunks, Version("anchor", 1))
        after, anchor_after = draw("policy").require(Version("policy", 1)), draw("anchor")
        with t.ref.loaded_into(t.anchor) as ref_chunks:
            t.engine.refit(ref_chunks, Version("reference", 0))
            reference = draw("reference")
        fresh = refused(lambda: after.require(Version("policy", 1)))
        flat = lambda r: [x for lps in r.logprobs for lp in lps for x in lp]  # noqa: E731
        return {"row": row, "stale": stale, "fresh_refused": fresh,
                **{name: flat(r) for name, r in (("before", before), ("after", after), ("anchor_before", anchor_before),
                                                 ("anchor_after", anchor_after), ("reference", reference))},
                "same_tokens": before.responses == reference.responses}
    finally:
        destroy_distributed()
