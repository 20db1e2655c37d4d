"""Claims (c) and (d) with the trainer (sampled gradients, a learned reward) on the `make demo` task:
(c) J-BOND's EMA anchor (η = 0.02) against the anchor replaced by the policy every 50 steps; (d) J-BOND
against REINFORCE (`bond.algorithm=reinforce`) at β_RL = 0.01, 0.1 and 0.3, paired per seed. REINFORCE
settles within tens of steps at a KL set by β_RL (≈ 10, 2.5 and 0.7 here), so 0.1 and 0.3 stop inside
J-BOND's range and 0.01 far beyond it.

    make demo                                                                  # builds the task under runs/demo
    .venv/bin/python benchmarks/trainer_claims.py --claim c --task runs/demo --out docs/results
    .venv/bin/python benchmarks/trainer_claims.py --claim d --task runs/demo --out docs/results

Each run is `megatron-bond train recipes/demo.yaml` at TP=1 (two at a time, one core each) with the demo's
checkpoints and prompts, evaluated every 5 steps; seeds 1, 2, 3 (run.seed: samplers, held-out split). Writes
trainer_claim_<c|d>.jsonl (every evaluation row of every run, then one summary line per compared
quantity: each seed's value, the mean and its 95 % t-interval) and claim_<c|d>_trainer.png.
(c) compares the front ratio (kl/ref over the task's exact Best-of-N KL where the run first reaches each
quantile of [0.8, 0.97]); (d) for each β_RL and seed, the run that ends at the smaller kl/ref at its end
against the other where its trajectory first reaches that KL (interpolated; `bracket_kl`: the KLs of the
two evaluations around that point, how finely it was resolved), J-BOND − REINFORCE, on quantile/ref and
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
    "d": {"J-BOND": [], **{f"REINFORCE, β_RL = {b}": ["bond.algorithm=reinforce", f"bond.beta_rl={b}"]
                           for b in (0.01, 0.1, 0.3)}},
}
# Equal-KL comparisons interpolate between evaluations: every 25 steps, REINFORCE at β_RL = 0.01 jumped from
# KL 0.6–0.9 to 7–15 between two of them, and the straight line across that jump was the comparison.
EVAL_EVERY = 5
KEYS = ("step", "quantile/ref", "quantile/ref_se", "kl/ref", "kl/ref_se", "reward/policy", "kl/ratio_to_bon")


def command(task: Path, run_dir: Path, seed: int, overrides: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "megatron_bond.cli", "train", "recipes/demo.yaml", "parallel.tp=1", f"train.steps={steps}",
            f"policy.ckpt={task / 'ckpt_policy'}", f"reward.ckpt={task / 'ckpt_reward'}",
            f"data.path={task / 'task' / 'prompts.jsonl'}", f"run.output_dir={run_dir}", f"run.seed={seed}",
            f"train.eval_every={EVAL_EVERY}", "logging.progress=false", "logging.wandb_mode=disabled", *overrides]


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
    first, *others = variants
    if args.claim == "c":
        # A seed's runs share its held-out prompts, so its Best-of-N curve: (quantile, KL) for front_ratio.
        curves = {s: task_bon_curve([json.loads(line)["rewards_ref"] for line in
                                     (runs / f"c0_seed{s}" / "samples" / "step-0.jsonl").read_text().splitlines()])[::-1]
                  for s in SEEDS}
        for name in variants:
            ratios = [front_ratio(runs_of[name, s], curves[s]) for s in SEEDS]
            lines.append({**summary(f"front ratio: {name}", [r for r, _ in ratios]), "reached": [f for _, f in ratios]})
        lines.append(summary(f"front ratio: {first} − {others[0]}", [a - b for a, b in zip(lines[-2]["per_seed"], lines[-1]["per_seed"])]))
    else:
        for other in others:
            points, brackets = [], []
            for s in SEEDS:
                # The endpoint, not the first reach, of the run that stops first: a REINFORCE settled at its KL
                # keeps improving its quantile there.
                stop, go = sorted((first, other), key=lambda name: runs_of[name, s][-1]["kl_ref"])
                kl, rows = runs_of[stop, s][-1]["kl_ref"], runs_of[go, s]
                points.append({stop: runs_of[stop, s][-1], go: at_first(rows, "kl_ref", kl)})
                i = next(i for i, r in enumerate(rows) if r["kl_ref"] >= kl)
                brackets.append([rows[max(i - 1, 0)]["kl_ref"], rows[i]["kl_ref"]])
            for key in ("quantile", "reward"):
                lines.append({**summary(f"{first} − {other}: {key} at the smaller final kl/ref",
                                        [pt[first][key] - pt[other][key] for pt in points]), "bracket_kl": brackets})
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
        ax.plot([mean("kl_ref", i) for i in range(n)], [mean("quantile", i) for i in range(n)], marker="o", markersize=2, lw=1, label=name)
    ax.set_xscale("symlog", linthresh=1)  # linear to KL 1, logarithmic beyond: REINFORCE at β_RL = 0.01 runs to ≈ 10
    ax.set_xlim(0, 1.15 * max(r["kl_ref"] for rows in runs_of.values() for r in rows))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref; linear to 1, logarithmic beyond)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(f"({args.claim}) the trainer on the demo task (each curve: the mean of {len(SEEDS)} seeds)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / f"claim_{args.claim}_trainer.png", dpi=110)


if __name__ == "__main__":
    main()
