"""Per-GPU memory of a J-BOND recipe on an allocation: the peak of each phase (rollout, scoring, train,
eval, checkpoint save and load), itemised, with a verdict on the largest.

    python tools/plan_memory.py RECIPE [key=value ...] --nodes N --gpus-per-node G [--gpu-memory-gb 80] [--cpu]

The architecture comes from policy.ckpt's config when the recipe names one that exists here, else from
the recipe's model section (the Gemma recipes spell out the released configs); the config is resolved
and validated as the trainer does (training dtype, heads against TP, ...). Exit code 0 when the plan
fits, 1 when it does not (with the smallest change that would), 2 for bad input.
"""

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from megatron_bond.config import ConfigError, ModelConfig, load_config
from megatron_bond.memory import Allocation, format_plan, plan, smallest_change
from megatron_bond.resolve import resolve_present


def _allocation(args) -> Allocation:
    if args.nodes < 1 or args.gpus_per_node < 0 or not 0 < args.gpu_memory_gb < math.inf:
        raise ConfigError(f"--nodes must be >= 1, --gpus-per-node >= 0 and --gpu-memory-gb a finite number > 0 (got {args.nodes}, "
                          f"{args.gpus_per_node}, {args.gpu_memory_gb})")
    return Allocation(args.nodes, max(1, args.gpus_per_node), args.gpu_memory_gb)


def _check_layout(cfg, alloc: Allocation) -> None:
    """What the trainer would refuse at start given the allocation: the world against TP·PP, the batch
    against DP (the config alone: resolve_present)."""
    mp = cfg.parallel.tp * cfg.parallel.pp
    if alloc.world % mp:
        fitting = [n for n in range(1, mp + 1) if n * alloc.gpus_per_node % mp == 0]
        raise ConfigError(f"{alloc.world} ranks ({alloc.nodes} × {alloc.gpus_per_node}) cannot hold tp·pp = {mp}: "
                          f"the recipe's layout needs a multiple of {fitting[0]} nodes of {alloc.gpus_per_node}")
    cfg.check_batch_split(alloc.world // mp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for megatron-bond train")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation (>= 1)")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (tasks) per node; 0 is read as 1 CPU task")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU in GB as NVIDIA counts it (GiB: an 80 GB H100 holds 80 GiB)")
    p.add_argument("--cpu", action="store_true", help="plan a CPU run (fp32, no distributed optimizer, no CUDA overhead)")
    args = p.parse_intermixed_args()
    try:
        alloc = _allocation(args)
        on_gpu = args.gpus_per_node > 0 and not args.cpu
        recipe = load_config(args.recipe, args.overrides)
        if recipe.policy.ckpt and not Path(recipe.policy.ckpt).exists() and recipe.model == ModelConfig():
            raise ConfigError(f"policy.ckpt {recipe.policy.ckpt} is not here and the recipe has no model section: "
                              "nothing to plan (keep the model section, or plan where the checkpoint is)")
        cfg, absent = resolve_present(recipe, on_gpu=on_gpu, check=False)
        reward = None
        if "reward.ckpt" in absent:
            reward = dataclasses.replace(cfg.model, reward_head=True)
            print(f"(reward model {recipe.reward.ckpt} not found here: planned as the policy's size)")
        elif cfg.reward.ckpt:
            from megatron_bond.models.checkpoint import read_checkpoint_config

            reward = read_checkpoint_config(cfg.reward.ckpt, check=False).model
        if reward is not None:  # it runs in the training dtype, beside the policy
            reward = dataclasses.replace(reward, params_dtype=cfg.model.params_dtype)
        _check_layout(cfg, alloc)
        if cfg.parallel.tp > alloc.gpus_per_node:
            print(f"warning: tp={cfg.parallel.tp} spans nodes ({alloc.gpus_per_node} GPUs each): every layer's "
                  "all-reduces then cross the network; keep TP within a node where the model fits")
        result = plan(cfg, alloc, reward, on_gpu=on_gpu)
        change = None if result.fits else smallest_change(cfg, alloc, reward, on_gpu=on_gpu)
    except ConfigError as err:
        print(f"plan_memory: {err}", file=sys.stderr)
        return 2
    print(format_plan(result, change))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
