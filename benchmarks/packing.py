"""Training-pass throughput, packed against right-padded, on two length distributions: one JSON line per
(distribution, layout) and a summary line per distribution.

    python benchmarks/packing.py                      # CPU, about 2 minutes on 2 cores
    python benchmarks/packing.py --repeats 5 model.hidden_size=512

The pass is the trainer's own (train/step.py: ``training_microbatches`` then ``forward_backward``, the
fused loss head inside megatron-core's schedule) on a tiny Gemma 2 (the trainer built from
recipes/tiny_cpu.yaml with the overrides below), on rows drawn from:
- ``skewed``: the demo's shape (recipes/demo.yaml): prompts of 4-16 tokens, responses of mean about 17
  tokens cut at 32 (docs/results.md: a mean length of 17.2 with 6 % cut), 32 % padding when right-padded;
- ``long_tailed``: reasoning-like: prompts 32-256 tokens, responses log-normal (median 96) cut at 1024.
Each line: the rows' label tokens, the positions computed (padding included), the padding share, the
median seconds of a forward + backward over ``--repeats`` runs after one warm-up, and label tokens per
second. Padded: parallel.micro_batch_size rows per microbatch; packed: train.max_tokens_per_microbatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import time

import torch

from megatron_bond.config import load_config
from megatron_bond.resolve import resolve_config
from megatron_bond.runtime import destroy_distributed, init_distributed
from megatron_bond.train.setup import build_trainer
from megatron_bond.train.step import forward_backward, training_microbatches

MODEL = ["model.family=gemma2", "model.post_norms=true", "model.zero_centered_norm=true", "model.scale_embeddings=true",
         "model.activation=gelu_tanh", "model.attn_logit_softcap=50.0", "model.final_logit_softcap=30.0",
         "model.max_seq_length=1280", "data.max_prompt_tokens=256", "rollout.max_new_tokens=1024",
         "logging.wandb_mode=disabled", "logging.progress=false", "data.num_prompts=64", "data.eval_size=8"]
DISTRIBUTIONS = {
    "skewed": dict(rows=32, micro_batch_size=8, budget=512),
    "long_tailed": dict(rows=16, micro_batch_size=4, budget=2048),
}


def draw(name: str, n: int, rng: random.Random) -> tuple[list[list[int]], list[list[int]]]:
    if name == "skewed":
        prompts = [rng.randint(4, 16) for _ in range(n)]
        responses = [min(32, max(1, round(rng.gauss(17, 7)))) for _ in range(n)]
    else:
        prompts = [rng.randint(32, 256) for _ in range(n)]
        responses = [min(1024, max(1, round(math.exp(rng.gauss(math.log(96), 1.0))))) for _ in range(n)]
    tokens = lambda k: [rng.randrange(1, 256) for _ in range(k)]  # noqa: E731
    return [tokens(k) for k in prompts], [tokens(k) for k in responses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="recipe key=value overrides (the model's size, ...)")
    args = parser.parse_args()
    cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*MODEL, *args.overrides]), on_gpu=torch.cuda.is_available())
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        device = next(t.policy[0].parameters()).device
        for name, shape in DISTRIBUTIONS.items():
            prompts, responses = draw(name, shape["rows"], random.Random(0))
            coef = torch.full((len(prompts),), 1.0 / len(prompts))
            lines = {}
            for packing in (False, True):
                run_cfg = dataclasses.replace(
                    cfg, train=dataclasses.replace(cfg.train, packing=packing, max_tokens_per_microbatch=shape["budget"]),
                    parallel=dataclasses.replace(cfg.parallel, micro_batch_size=shape["micro_batch_size"]))
                micro = [m.to(device) for m in training_microbatches(run_cfg, prompts, responses, coef)]
                seconds = []
                for _ in range(args.repeats + 1):  # the first is a warm-up
                    start = time.perf_counter()
                    forward_backward(t.policy, micro)
                    seconds.append(time.perf_counter() - start)
                tokens = sum(len(p) + len(r) - 1 for p, r in zip(prompts, responses))
                positions = sum(m.size for m in micro)
                s = statistics.median(seconds[1:])
                lines[packing] = {"benchmark": "packing", "distribution": name, "layout": "packed" if packing else "padded",
                                  "rows": len(prompts), "microbatches": len(micro), "label_tokens": tokens,
                                  "positions": positions, "padding_share": round(1 - tokens / positions, 4),
                                  "seconds": round(s, 4), "tokens_per_s": round(tokens / s, 1)}
                print(json.dumps(lines[packing]), flush=True)
            print(json.dumps({"benchmark": "packing", "distribution": name, "speedup": round(
                lines[True]["tokens_per_s"] / lines[False]["tokens_per_s"], 2)}), flush=True)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
