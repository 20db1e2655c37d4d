"""Where a J-BOND step's time goes: one JSON line per step, seconds per phase and the padding shares.

    python benchmarks/step_breakdown.py --steps 6                                  # the tiny recipe, TP=1
    python benchmarks/step_breakdown.py --recipe recipes/demo.yaml --nproc 2 --steps 6 parallel.tp=2 \\
        policy.ckpt=runs/demo/ckpt_policy reward.ckpt=runs/demo/ckpt_reward data.path=runs/demo/task/prompts.jsonl
    python benchmarks/step_breakdown.py --metrics runs/demo/train/metrics.jsonl    # a finished run's rows

Runs `megatron-bond train` (under torchrun with --nproc ranks, no evaluation and no checkpoints in the
timed steps) once per engine in --engines, then reads its metrics.jsonl (or the --metrics file). Each
line: the engine, the step, the seconds of policy rollout, anchor rollout, refit, reward, re-scoring
(log-probs), training pass with optimizer step, EMA anchor update, and the step; the rollout phase's
share of the step, generated tokens per second, and the share of computed token positions that were
padding in the rollouts and in the training batch. A last line per engine has the medians over the
steps after the first (the first step pays one-time costs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = {  # JSON key: metrics key
    "rollout_policy_s": "time/rollout_policy", "rollout_anchor_s": "time/rollout_anchor", "refit_s": "time/refit",
    "reward_s": "time/reward", "scoring_s": "time/logprobs", "train_s": "time/update", "ema_s": "time/anchor_update",
}


def breakdown(row: dict, engine: str) -> dict:
    """A step row's figures; a key that the run did not record (an older run, an engine without padding
    counts) is None."""
    step_s = row["time/rollout"] + row["time/score"] + row["time/train"]
    return {
        "engine": engine, "step": row["step"], **{k: row.get(v) for k, v in PHASES.items()}, "step_s": step_s,
        "rollout_share": row["time/rollout"] / step_s, "rollout_tokens_per_s": row.get("rollout/tokens_per_s"),
        "rollout_padding_share": row.get("rollout/padding_share"), "train_padding_share": row.get("train/padding_share"),
    }


def step_rows(metrics: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r for r in rows if "time/rollout" in r]  # step rows (evaluation rows have no rollout phase)


def train(args, engine: str, out_dir: Path) -> Path:
    overrides = [f"rollout.engine={engine}", f"train.steps={args.steps}", f"run.output_dir={out_dir}",
                 f"train.eval_every={args.steps + 1}", f"checkpoint.every={args.steps + 1}", *args.overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "megatron_bond.cli", "train", args.recipe, *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return out_dir / "metrics.jsonl"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="recipes/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads, split over the ranks")
    p.add_argument("--engines", default="native", help="comma-separated rollout engines to run one after another")
    p.add_argument("--metrics", type=Path, help="summarise this metrics.jsonl instead of training")
    p.add_argument("--out", type=Path, help="also append the lines to this file")
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    args = p.parse_args()
    args.threads = max(1, args.threads // args.nproc)

    runs = []
    if args.metrics:
        runs.append((_engine_of(args.metrics), args.metrics))
    else:
        from megatron_bond.rollout.engine import ENGINES

        for engine in args.engines.split(","):
            if engine not in ENGINES:
                raise SystemExit(f"--engines: {engine!r} is not installed here (this build has {sorted(ENGINES)})")
        tmp = Path(tempfile.mkdtemp(prefix="mbond-breakdown-"))
        runs = [(engine, train(args, engine, tmp / engine)) for engine in args.engines.split(",")]

    lines = []
    for engine, metrics in runs:
        rows = [breakdown(r, engine) for r in step_rows(metrics)]
        later = rows[1:] or rows
        summary = {"engine": engine, "summary": "median over steps after the first", "steps": len(later),
                   **{k: _median([r[k] for r in later]) for k in rows[0] if k not in ("engine", "step")}}
        lines += rows + [summary]
    text = "\n".join(json.dumps(line) for line in lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _engine_of(metrics: Path) -> str:
    """The engine a finished run used, from the config it saved beside its metrics (native before the key)."""
    import yaml

    config = metrics.parent / "config.yaml"
    if not config.exists():
        return "native"
    return (yaml.safe_load(config.read_text()).get("rollout") or {}).get("engine", "native")


if __name__ == "__main__":
    main()
