"""Per-GPU memory of a J-BOND recipe on an allocation, itemised, with a verdict.

    python tools/plan_memory.py RECIPE [key=value ...] --nodes N --gpus-per-node G [--gpu-memory-gb 80]

The architecture comes from policy.ckpt's config when the recipe names one that exists here, else from
the recipe's model section (the Gemma recipes spell out the released configs). Exit code 0 when the plan
fits, 1 when it does not (with the smallest change that would), 2 for bad input.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from megatron_bond.config import ConfigError, load_config
from megatron_bond.memory import Allocation, format_plan, plan, smallest_change


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for megatron-bond train")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the allocation")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (tasks) per node; 0 is read as 1 CPU task")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU in GB as NVIDIA counts it (GiB: an 80 GB H100 holds 80 GiB)")
    p.add_argument("--cpu", action="store_true", help="plan a CPU run (fp32, no distributed optimizer, no CUDA overhead)")
    args = p.parse_intermixed_args()
    try:
        cfg = load_config(args.recipe, args.overrides)
        reward = None
        if cfg.policy.ckpt and Path(cfg.policy.ckpt, "megatron_bond.json").is_file():
            from megatron_bond.models.checkpoint import read_checkpoint_config

            cfg = dataclasses.replace(cfg, model=read_checkpoint_config(cfg.policy.ckpt, check=False).model)
        if cfg.reward.ckpt and Path(cfg.reward.ckpt, "megatron_bond.json").is_file():
            from megatron_bond.models.checkpoint import read_checkpoint_config

            reward = read_checkpoint_config(cfg.reward.ckpt, check=False).model
        elif cfg.reward.ckpt:  # not on this machine: assume a reward model of the policy's size
            reward = dataclasses.replace(cfg.model, reward_head=True)
            print(f"(reward model {cfg.reward.ckpt} not found here: planned as the policy's size)")
        gpus = max(1, args.gpus_per_node)
        on_gpu = args.gpus_per_node > 0 and not args.cpu
        alloc = Allocation(args.nodes, gpus, args.gpu_memory_gb)
        if alloc.world % (cfg.parallel.tp * cfg.parallel.pp):
            raise ConfigError(f"{alloc.world} ranks are not divisible by tp*pp={cfg.parallel.tp * cfg.parallel.pp}")
        cfg.check_batch_split(alloc.world // (cfg.parallel.tp * cfg.parallel.pp))  # what the trainer would refuse
        result = plan(cfg, alloc, reward, on_gpu=on_gpu, recompute=cfg.parallel.recompute)
        change = None if result.fits else smallest_change(cfg, alloc, reward, on_gpu=on_gpu)
    except ConfigError as err:
        print(f"plan_memory: {err}", file=sys.stderr)
        return 2
    print(format_plan(result, change))
    return 0 if result.fits else 1


if __name__ == "__main__":
    sys.exit(main())
