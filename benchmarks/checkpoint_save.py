"""How long a checkpoint save stops training, synchronous against checkpoint.async_save, side by side in
one process on the same trainer: one JSON line per save, and a last line with the medians and their ratio.

    python benchmarks/checkpoint_save.py                          # a 166M-parameter GPT (hidden 1024, 8 layers, vocab 32k)
    python benchmarks/checkpoint_save.py --saves 3 model.num_layers=4

The trainer is built from recipes/tiny_cpu.yaml with the model overrides (one rank, fp32: weights, the
anchor's fp32 shadow and Adam's moments and masters are written). A first save is not timed (one-time costs). ``stall_s`` is the time ``save``
holds the training loop; for the async writer ``complete_s`` is the further time until every rank's
files are written and ``latest`` names the checkpoint (``wait``), the part training overlaps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from megatron.core import parallel_state as ps

from megatron_bond.config import load_config
from megatron_bond.resolve import resolve_config
from megatron_bond.runtime import destroy_distributed, init_distributed
from megatron_bond.train.setup import build_trainer
from megatron_bond.train.state import CheckpointWriter
from megatron_bond.train.step import train_step

MODEL = ["model.hidden_size=1024", "model.ffn_hidden_size=4096", "model.num_layers=8", "model.num_attention_heads=16",
         "model.num_query_groups=8", "model.vocab_size=32000", "parallel.micro_batch_size=4", "train.global_batch_size=4",
         "rollout.max_new_tokens=4", "data.eval_size=4", "logging.wandb_mode=disabled", "logging.progress=false"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--saves", type=int, default=3, help="saves per writer")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve_config(load_config("recipes/tiny_cpu.yaml", [*MODEL, *args.overrides, f"run.output_dir={out}"]))
        dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
        try:
            t = build_trainer(cfg, dist)
            train_step(t, 1)  # Adam's state exists before the first save
            params = sum(p.numel() for c in t.policy for p in c.parameters())
            # One save first, not timed: dist_checkpointing's first call pays one-time costs (imports, plans).
            CheckpointWriter(cfg, dist, ps.get_data_parallel_group(), Path(out) / "warmup").save(t, 1)
            results = {}
            for mode in ("sync", "async"):
                writer_cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, async_save=mode == "async"))
                writer = CheckpointWriter(writer_cfg, dist, ps.get_data_parallel_group(), Path(out) / mode)
                for i in range(args.saves):
                    start = time.perf_counter()
                    ckpt = writer.save(t, i + 1)
                    stall = time.perf_counter() - start
                    writer.wait()
                    complete = time.perf_counter() - start - stall
                    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
                    row = {"writer": mode, "save": i + 1, "params": params, "bytes": size, "stall_s": round(stall, 3),
                           "complete_s": round(complete, 3)}
                    results.setdefault(mode, []).append(row)
                    print(json.dumps(row), flush=True)
            sync, asyn = (statistics.median(r["stall_s"] for r in results[m]) for m in ("sync", "async"))
            print(json.dumps({"summary": True, "params": params, "median_stall_s": {"sync": sync, "async": asyn},
                              "stall_ratio_async_over_sync": round(asyn / sync, 3)}), flush=True)
        finally:
            destroy_distributed()


if __name__ == "__main__":
    main()
