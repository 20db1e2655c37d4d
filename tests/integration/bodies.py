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
