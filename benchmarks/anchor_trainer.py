"""Claim (c) with sampled gradients: the trainer on the `make demo` task, J-BOND with its EMA anchor
(η = 0.02) against the same run with the anchor replaced by the policy every 50 steps.

    make demo                                                  # builds the task under runs/demo
    .venv/bin/python benchmarks/anchor_trainer.py --task runs/demo --out docs/results   # ~15 min, 2 cores

Each run is `megatron-bond train recipes/demo.yaml` at TP=1 (two at a time, one core each) with the demo's
checkpoints and prompts; seeds 1, 2, 3 (run.seed: samplers, held-out split). Writes
anchor_trainer.jsonl (the evaluation rows of every run) and claim_c_trainer.png (quantile/ref against
kl/ref, mean over seeds, beside the Best-of-N curve).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_bond.demo.plot import bon_curve  # noqa: E402

SEEDS = (1, 2, 3)
ANCHORS = {"EMA anchor, η = 0.02": ["bond.anchor=ema"], "anchor swapped every 50 steps": ["bond.anchor=swap", "bond.swap_every=50"]}


def command(task: Path, run_dir: Path, seed: int, anchor: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "megatron_bond.cli", "train", "recipes/demo.yaml", "parallel.tp=1", f"train.steps={steps}",
            f"policy.ckpt={task / 'ckpt_policy'}", f"reward.ckpt={task / 'ckpt_reward'}",
            f"data.path={task / 'task' / 'prompts.jsonl'}", f"run.output_dir={run_dir}", f"run.seed={seed}",
            "logging.progress=false", "logging.wandb_mode=disabled", *anchor]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="runs/demo", help="the output directory of `make demo`")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--runs", default="runs/anchor_trainer", help="where the training runs go (and resume from)")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    task, out, runs = (Path(a).resolve() for a in (args.task, args.out, args.runs))
    jobs = [(name, seed, runs / f"{i}_seed{seed}") for i, name in enumerate(ANCHORS) for seed in SEEDS]
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for start in range(0, len(jobs), 2):  # two runs at a time, one core each
        procs = []
        for name, seed, run_dir in jobs[start : start + 2]:
            # a finished run is reused (train resumes it to --steps, or finds nothing left to do)
            print(f"training: {name}, seed {seed} -> {run_dir} (log: {run_dir}.log)", flush=True)
            with open(f"{run_dir}.log", "w") as log:
                procs.append(subprocess.Popen(command(task, run_dir, seed, ANCHORS[name], args.steps), cwd=ROOT,
                                              env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = [proc.wait() for proc in procs]  # both end before any error is raised
        if any(codes):
            raise SystemExit(f"a training run failed: see the logs above ({codes})")
    rows = []
    for name, seed, run_dir in jobs:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("eval"):
                rows.append({"anchor": name, "seed": seed, **{k: row[k] for k in ("step", "quantile/ref", "kl/ref", "reward/policy")}})
    (out / "anchor_trainer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    kl, q = bon_curve()
    ax.plot(kl, q, "k--", label="Best-of-N (log N − (N−1)/N, N/(N+1))")
    for name in ANCHORS:
        steps = sorted({r["step"] for r in rows if r["anchor"] == name})
        mean = lambda key, s: sum(r[key] for r in rows if r["anchor"] == name and r["step"] == s) / len(SEEDS)  # noqa: E731
        ax.plot([mean("kl/ref", s) for s in steps], [mean("quantile/ref", s) for s in steps], marker="o", markersize=3, label=name)
        last = steps[-1]
        print(json.dumps({"anchor": name, "step": last, "quantile/ref": mean("quantile/ref", last),
                          "kl/ref": mean("kl/ref", last), "reward/policy": mean("reward/policy", last),
                          "per_seed": [{k: r[k] for k in ("seed", "quantile/ref", "kl/ref", "reward/policy")}
                                       for r in rows if r["anchor"] == name and r["step"] == last]}))
    ax.set_xlim(0, 1.15 * max(r["kl/ref"] for r in rows))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(f"(c) J-BOND on the demo task, sampled: EMA against swaps (mean of {len(SEEDS)} seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "claim_c_trainer.png", dpi=110)


if __name__ == "__main__":
    main()
