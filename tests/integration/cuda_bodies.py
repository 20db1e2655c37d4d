"""Rank bodies for tests/integration/test_cuda_paths.py: the trainer on CUDA with its GPU defaults
(bf16 parameters, fp32 main weights, megatron-core's distributed optimizer), which CPU CI cannot build."""

from __future__ import annotations

import math

import torch

from megatron_bond.config import load_config
from megatron_bond.runtime import destroy_distributed, init_distributed
from tests.distributed.train_bodies import TINY


def bf16_trainer_steps_and_sharded_anchor(steps: int = 3, ema_steps: int = 50, eta: float = 0.02,
                                          gap: float = 0.01) -> dict:
    """Build the tiny trainer on CUDA (auto dtype: bf16), run ``steps`` J-BOND steps, then move the
    optimizer's fp32 master shards 1 % and run ``ema_steps`` EMA updates: the fraction of the gap the
    anchor's fp32 shadow closes, and the largest distance of the anchor model's bf16 weights from the
    closed form, in bf16 ulps (the same measures as the CPU test of the Float16 optimizer's layout)."""
    from megatron_bond.resolve import resolve_config
    from megatron_bond.train.setup import build_trainer
    from megatron_bond.train.step import train_step

    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", TINY))
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        rows = [train_step(t, step=s) for s in range(1, steps + 1)]
        slots = t.anchor.slots
        start = [s.shadow.clone() for s in slots]
        with torch.no_grad():
            for s in slots:
                s.master.mul_(1 + gap)
        for _ in range(ema_steps):
            t.anchor.ema_(eta)
        closed = [a + (1 - (1 - eta) ** ema_steps) * (s.master - a) for a, s in zip(start, slots)]
        moved = sum((s.shadow - a).abs().sum().item() for s, a in zip(slots, start))
        total = sum((s.master - a).abs().sum().item() for s, a in zip(slots, start))
        eps = torch.finfo(torch.bfloat16).eps
        ulps = max(((s.target.float() - c.view_as(s.target)).abs() / (eps * c.view_as(s.target).abs().clamp_min(1e-30)))
                   .max().item() for s, c in zip(slots, closed))
        return {
            "dtype": cfg.model.params_dtype,
            "param_dtypes": sorted({str(p.dtype) for c in t.policy for p in c.parameters()}),
            "optimizer": type(t.optimizer).__name__,
            "inner": [type(o).__name__ for o in getattr(t.optimizer, "chained_optimizers", [t.optimizer])],
            "sharded": t.anchor.sharded,
            "shadow_dtypes": sorted({str(s.shadow.dtype) for s in slots}),
            "rows": [{k: v for k, v in r.items() if isinstance(v, (int, float, bool)) or v is None} for r in rows],
            "finite": all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows),
            "fp32_anchor": moved / total,
            "closed_form": 1 - (1 - eta) ** ema_steps,
            "max_ulps_from_closed_form": ulps,
        }
    finally:
        destroy_distributed()
