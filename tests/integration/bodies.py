"""Rank bodies for conversion parity: score a converted checkpoint at a given layout."""

from __future__ import annotations

import os


def score_checkpoint(ckpt: str, tp: int, pp: int, rows: list[list[int]], out: str) -> list:
    """Run `megatron-bond score` (the CLI entry) on these ranks; rank 0 returns the parsed output."""
    import json

    from megatron_bond.cli import main

    inp = f"{out}.in.jsonl"
    if os.environ["RANK"] == "0":
        with open(inp, "w") as f:
            for r in rows:
                f.write(json.dumps({"tokens": r}) + "\n")
    import torch.distributed  # noqa: F401  (the file must exist before the other ranks read it)

    _wait_for(inp)
    code = main(["score", "--ckpt", ckpt, "--tp", str(tp), "--pp", str(pp), "--input", inp,
                 "--output", out, "--batch-size", "3"])
    assert code == 0
    if os.environ["RANK"] != "0":
        return []
    return [json.loads(line) for line in open(out)]


def _wait_for(path: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


def resave_at_layout(ckpt: str, tp: int, pp: int, out: str) -> None:
    """Load a checkpoint at this layout and save it again, as training at that layout would."""
    import shutil

    from megatron_bond.config import ParallelConfig
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config, save_model_checkpoint
    from megatron_bond.runtime import destroy_distributed, init_distributed

    cfg = read_checkpoint_config(ckpt, ParallelConfig(tp=tp, pp=pp))
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        chunks = load_model_checkpoint(ckpt, cfg)
        save_model_checkpoint(chunks, cfg, out)
        if os.environ["RANK"] == "0":
            shutil.copytree(f"{ckpt}/hf", f"{out}/hf")
    finally:
        destroy_distributed()
