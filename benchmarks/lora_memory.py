"""LoRA against full fine-tuning in the memory planner: one JSON line per phase with both totals (GiB per
GPU), then one line of what each trains and what an engine refit of policy + anchor would move.

    python benchmarks/lora_memory.py                                   # recipes/jbond_gemma2_27b_lora.yaml, 1 × 8 GPUs
    python benchmarks/lora_memory.py --recipe R --nodes N [key=value ...]

Both plans come from megatron_bond.memory.plan on the same recipe and allocation, full fine-tuning with
model.lora.rank=0; the reward model is planned at the policy's size (as tools/plan_memory.py does for a
checkpoint that is not on this machine). The refit bytes are counts (weights in the model dtype: the
whole model per role for full fine-tuning, the adapters per role under LoRA), not a measured refit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from megatron_bond.config import load_config
from megatron_bond.memory import DTYPE_BYTES, GiB, Allocation, adapter_params, plan, stage_params
from megatron_bond.phases import PHASES
from megatron_bond.resolve import resolve_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/jbond_gemma2_27b_lora.yaml")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    alloc = Allocation(args.nodes, args.gpus_per_node)
    recipe = load_config(args.recipe, [*args.overrides, "policy.ckpt=null", "reward.ckpt=null"])
    plans, counts = {}, {}
    for name, rank in (("lora", recipe.model.lora.rank), ("full", 0)):
        lora = dataclasses.replace(recipe.model.lora, rank=rank)
        cfg = resolve_config(dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, lora=lora)), on_gpu=True)
        m, par = cfg.model, cfg.parallel
        reward = dataclasses.replace(m, reward_head=True, lora=dataclasses.replace(m.lora, rank=0))
        plans[name] = plan(cfg, alloc, reward, on_gpu=True, recompute=par.recompute)
        layers = par.stage_layers(m.num_layers)
        trained = sum(adapter_params(m, 1, n) if m.lora.enabled else stage_params(m, 1, par.pp, s, n)
                      for s, n in enumerate(layers))
        counts[name] = {"trained_params": trained, "refit_bytes_per_step": 2 * DTYPE_BYTES[m.params_dtype] * trained}
    for phase in PHASES:
        print(json.dumps({"phase": phase, **{f"{k}_gib": round(pl.phase_total(phase) / GiB, 2) for k, pl in plans.items()}}))
    print(json.dumps({"recipe": args.recipe, "allocation": f"{alloc.nodes} x {alloc.gpus_per_node}",
                      "layout": plans["lora"].layout, **{f"{k}_fits": pl.fits for k, pl in plans.items()},
                      **{f"{k}_{c}": v for k, cs in counts.items() for c, v in cs.items()}}))


if __name__ == "__main__":
    main()
