"""Claims (c) and (d) with the trainer (sampled gradients, a learned reward) on the `make demo` task:
(c) J-BOND's EMA anchor (η = 0.02) against the anchor replaced by the policy every 50 steps; (d) J-BOND
against REINFORCE (`bond.algorithm=reinforce`, β_RL = 0.01), paired per seed.

    make demo                                                                  # builds the task under runs/demo
    .venv/bin/python benchmarks/trainer_claims.py --claim c --task runs/demo --out docs/results
    .venv/bin/python benchmarks/trainer_claims.py --claim d --task runs/demo --out docs/results

Each run is `megatron-bond train recipes/demo.yaml` at TP=1 (two at a time, one core each) with the demo's
checkpoints and prompts; seeds 1, 2, 3 (run.seed: samplers, held-out split). Writes
trainer_claim_<c|d>.jsonl (every evaluation row of every run, then one summary line per compared
quantity: each seed's value, the mean and its 95 % t-interval) and claim_<c|d>_trainer.png.
(c) compares the front ratio (kl/ref over the task's exact Best-of-N KL where the run first reaches each
quantile of [0.8, 0.97]); (d) both trajectories where they first reach the smaller of the two runs'
final kl/ref (the one that went further is interpolated there), J-BOND − REINFORCE, on quantile/ref and
on reward/policy (positive favours J-BOND).
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

from megatron_bond.bond.estimates import mean_interval  # noqa: E402
from megatron_bond.bond.simulator import at_first, front_ratio  # noqa: E402
from megatron_bond.demo.plot import task_bon_curve  # noqa: E402
from megatron_bond.jsonl import strict  # noqa: E402

SEEDS = (1, 2, 3)
CLAIMS = {
    "c": {"EMA anchor, η = 0.02": ["bond.anchor=ema"],
          "anchor swapped every 50 steps": ["bond.anchor=swap", "bond.swap_every=50"]},
    "d": {"J-BOND": [], "REINFORCE, β_RL = 0.01": ["bond.algorithm=reinforce", "bond.beta_rl=0.01"]},
}
KEYS = ("step", "quantile/ref", "quantile/ref_se", "kl/ref", "kl/ref_se", "reward/policy", "kl/ratio_to_bon")


def command(task: Path, run_dir: Path, seed: int, overrides: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "megatron_bond.cli", "train", "recipes/demo.yaml", "parallel.tp=1", f"train.steps={steps}",
            f"policy.ckpt={task / 'ckpt_policy'}", f"reward.ckpt={task / 'ckpt_reward'}",
            f"data.path={task / 'task' / 'prompts.jsonl'}", f"run.output_dir={run_dir}", f"run.seed={seed}",
            "logging.progress=false", "logging.wandb_mode=disabled", *overrides]


def summary(name: str, per_seed: list[float]) -> dict:
    mean, lo, hi = mean_interval(per_seed)
    return {"kind": "summary", "metric": name, "seeds": list(SEEDS), "per_seed": per_seed, "mean": mean, "ci95": [lo, hi]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--claim", choices=sorted(CLAIMS), required=True)
    p.add_argument("--task", default="runs/demo", help="the output directory of `make demo`")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--runs", default="runs/trainer_claims", help="where the training runs go (and resume from)")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    task, out, runs = (Path(a).resolve() for a in (args.task, args.out, args.runs))
    variants = CLAIMS[args.claim]
    jobs = [(name, seed, runs / f"{args.claim}{i}_seed{seed}") for i, name in enumerate(variants) for seed in SEEDS]
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for start in range(0, len(jobs), 2):  # two runs at a time, one core each
        procs = []
        for name, seed, run_dir in jobs[start : start + 2]:
            # a finished run is reused (train resumes it to --steps, or finds nothing left to do)
            print(f"training: {name}, seed {seed} -> {run_dir} (log: {run_dir}.log)", flush=True)
            with open(f"{run_dir}.log", "w") as log:
                procs.append(subprocess.Popen(command(task, run_dir, seed, variants[name], args.steps), cwd=ROOT,
                                              env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = [proc.wait() for proc in procs]  # both end before any error is raised
        if any(codes):
            raise SystemExit(f"a training run failed: see the logs above ({codes})")

    runs_of = {}  # (variant, seed) -> evaluation rows, with the simulator's key names for the helpers
    for name, seed, run_dir in jobs:
        evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        runs_of[name, seed] = [{**{k: r[k] for k in KEYS}, "quantile": r["quantile/ref"], "kl_ref": r["kl/ref"],
                                "reward": r["reward/policy"]} for r in evals]
    ref_rewards = [json.loads(line)["rewards_ref"] for line in (jobs[0][2] / "samples" / "step-0.jsonl").read_text().splitlines()]
    curve = task_bon_curve(ref_rewards)  # (KL, quantile): the same held-out prompts for a seed's runs
    lines = [{"kind": "eval", "variant": name, "seed": seed, **{k: r[k] for k in KEYS}}
             for (name, seed), rows in runs_of.items() for r in rows]
    first, second = variants
    if args.claim == "c":
        # A seed's runs share its held-out prompts, so its Best-of-N curve: (quantile, KL) for front_ratio.
        curves = {s: task_bon_curve([json.loads(line)["rewards_ref"] for line in
                                     (runs / f"c0_seed{s}" / "samples" / "step-0.jsonl").read_text().splitlines()])[::-1]
                  for s in SEEDS}
        for name in variants:
            ratios = [front_ratio(runs_of[name, s], curves[s]) for s in SEEDS]
            lines.append({**summary(f"front ratio: {name}", [r for r, _ in ratios]), "reached": [f for _, f in ratios]})
        lines.append(summary(f"front ratio: {first} − {second}", [a - b for a, b in zip(lines[-2]["per_seed"], lines[-1]["per_seed"])]))
    else:
        for key in ("quantile", "reward"):
            diffs = []
            for s in SEEDS:  # at the KL both runs reach: the smaller of their final ones
                kl = min(runs_of[name, s][-1]["kl_ref"] for name in variants)
                a, b = (at_first(runs_of[name, s], "kl_ref", kl) for name in variants)
                diffs.append(a[key] - b[key])
            lines.append(summary(f"{first} − {second}: {key} at the smaller final kl/ref", diffs))
    for name in variants:
        for key in ("quantile", "kl_ref", "reward"):
            lines.append(summary(f"final {key}: {name}", [runs_of[name, s][-1][key] for s in SEEDS]))
    (out / f"trainer_claim_{args.claim}.jsonl").write_text("".join(json.dumps(strict(r)) + "\n" for r in lines))
    for r in lines:
        if r["kind"] == "summary":
            print(json.dumps(strict(r)), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(*curve, "k-", lw=1, label=f"Best-of-N of π_ref on this task (exact, ties; seed {SEEDS[0]}'s prompts)")
    for name in variants:
        rows = [runs_of[name, s] for s in SEEDS]
        n = min(map(len, rows))
        mean = lambda key, i: sum(r[i][key] for r in rows) / len(rows)  # noqa: E731
        ax.plot([mean("kl_ref", i) for i in range(n)], [mean("quantile", i) for i in range(n)], marker="o", markersize=3, label=name)
    ax.set_xlim(0, 1.15 * max(r["kl_ref"] for rows in runs_of.values() for r in rows))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(f"({args.claim}) the trainer on the demo task: {first} against {second} (mean of {len(SEEDS)} seeds)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / f"claim_{args.claim}_trainer.png", dpi=110)


if __name__ == "__main__":
    main()
