"""The BOND paper's claims as experiments that could have failed, on sequence problems small enough to
enumerate (every KL and quantile of a policy is exact; only the gradients are sampled where a claim
says so), with the package's own losses and algorithm objects (megatron_bond/bond/).

    python benchmarks/paper_claims.py --out docs/results            # all claims, ~15 min on 2 cores
    python benchmarks/paper_claims.py --out /tmp/smoke --smoke      # 2 seeds, short runs (CI)
    python benchmarks/paper_claims.py --task enumerable --out docs/results/enumerable_claims.jsonl [--smoke]

``--task enumerable`` runs the claims on the enumerable transformer task instead
(benchmarks/enumerable_claims.py says what it pre-registers); ``--out`` is then the JSON-lines file, the
figures go next to it.

Each claim writes JSON lines to OUT/paper_claims.jsonl: one "summary" line per setting with each seed's
value (``per_seed``), the mean and its 95 % Student-t interval over seeds (``ci95``), and the verdict;
and "curve" lines (one per run: its logged trajectory). The figures are drawn from that file afterwards
(``--plot-only`` redraws them without running anything).

Problems: SequenceProblem.random(vocab=4, length=3, seed) (64 sequences, distinct rewards rescaled to
[0, 1], a random reference policy); (a) uses a factorised policy class (one logits row per position),
which cannot represent π_BoN. Seeds are problem seeds; a run's sampler seed is 1000 + its problem seed,
and paired comparisons share both.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_bond.bond import bon_probs, jeffreys, kl, policy_gradient_loss  # noqa: E402
from megatron_bond.bond.algorithms import Bond, Reinforce  # noqa: E402
from benchmarks import enumerable_claims  # noqa: E402
from benchmarks.claims_report import as_json, problem, seed_band, sign_verdict, summary  # noqa: E402
from benchmarks.paper_claims_retro import retro  # noqa: E402
from megatron_bond.bond.simulator import (  # noqa: E402
    SequenceProblem, at_first, bon_curve, front_ratio, run_jbond, sampled_loss,
)


def adam(p: SequenceProblem, steps: int, lr: float, loss_of, log_every: int = 10, decay: bool = False) -> list[dict]:
    """Adam from π_ref on ``loss_of(logits, step)`` (with ``decay``, the learning rate decays to 0 on a
    cosine, so the last iterate settles instead of jittering at the noise floor); the exact point
    every ``log_every`` steps."""
    logits = p.ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)) if decay else 1.0)
    rows = []
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            rows.append({"step": step, **p.point(logits), "logits": logits.detach().clone()})
        if step == steps:
            return rows
        opt.zero_grad()
        loss_of(logits, step).backward()
        opt.step()
        sched.step()


def _divergences(p: SequenceProblem, logits, target) -> dict:
    pi = p.log_probs(logits).detach().exp()
    return {"forward_kl": kl(target, pi).item(), "backward_kl": kl(pi, target).item()}


# (a) β with a policy class that cannot represent π_BoN
A_BETAS, A_N, A_K, A_BATCH, A_LRS = (0.0, 0.5, 1.0), 8, 16, 64, (0.01, 0.03, 0.1)


def claim_a(seeds: list[int], steps: int) -> list[dict]:
    out = []
    exact, sampled = {b: [] for b in A_BETAS}, {b: [] for b in A_BETAS}
    lrs = {b: _tune_lr_a(b, steps) for b in A_BETAS}
    for s in seeds:
        p = problem(s, factorised=True)
        target = bon_probs(p.ref_probs(), p.rewards, A_N)
        for beta in A_BETAS:
            exact[beta].append(_converge_exact(p, target, beta))
            gen = torch.Generator().manual_seed(1000 + s)
            rows = adam(p, steps, lrs[beta], lambda lg, _s: sampled_loss(p, lg, Bond(n=A_N, k=A_K, beta=beta, anchor="fixed"),
                                                                         p.ref_logits, A_BATCH, gen), decay=True)
            sampled[beta].append(_divergences(p, rows[-1]["logits"], target))
            out.append({"kind": "curve", "claim": "a", "setting": f"sampled beta={beta}", "seed": s,
                        "rows": [{"step": r["step"], **_divergences(p, r["logits"], target)} for r in rows]})
    for name, runs in (("exact", exact), ("sampled", sampled)):
        for beta in A_BETAS:
            for key in ("forward_kl", "backward_kl"):
                out.append(summary("a", f"{name} beta={beta}", key, [r[key] for r in runs[beta]], seeds,
                                   lr=lrs[beta] if name == "sampled" else None))
        # The claim per pair: β = 0.5's backward KL ≤ β = 0's and its forward KL ≤ β = 1's.
        back = [m[0.5] - m[0.0] for m in ({b: r["backward_kl"] for b, r in zip(A_BETAS, rs)} for rs in zip(*runs.values()))]
        fwd = [m[0.5] - m[1.0] for m in ({b: r["forward_kl"] for b, r in zip(A_BETAS, rs)} for rs in zip(*runs.values()))]
        held = sum(b <= 0 and f <= 0 for b, f in zip(back, fwd))
        for metric, diffs in (("backward_kl(0.5) - backward_kl(0)", back), ("forward_kl(0.5) - forward_kl(1)", fwd)):
            row = summary("a", name, metric, diffs, seeds, pairs_where_both_hold=f"{held}/{len(seeds)}")
            row["verdict"] = sign_verdict(*row["ci95"]) if max(diffs) > 0 or name == "sampled" else "holds in every pair"
            out.append(row)
    return out


def _converge_exact(p: SequenceProblem, target, beta: float) -> dict:
    """L-BFGS on the exact J^β(π‖π_BoN) until its gradient norm is below 1e-4 (checked)."""
    logits = p.ref_logits.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=2000, tolerance_grad=1e-9, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = jeffreys(p.log_probs(logits).exp(), target, beta)
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    norm = logits.grad.norm().item()
    if norm >= 1e-4:
        raise RuntimeError(f"(a) exact β={beta}: L-BFGS stopped at gradient norm {norm:.1e}")
    return {**_divergences(p, logits, target), "grad_norm": norm}


def _tune_lr_a(beta: float, steps: int) -> float:
    """The learning rate of A_LRS with the lowest final J^β on two tuning problems (seeds 100, 101, not
    among the evaluated ones)."""
    def final(lr):
        total = 0.0
        for s in (100, 101):
            p = problem(s, factorised=True)
            target, gen = bon_probs(p.ref_probs(), p.rewards, A_N), torch.Generator().manual_seed(1000 + s)
            rows = adam(p, steps, lr, lambda lg, _s: sampled_loss(p, lg, Bond(n=A_N, k=A_K, beta=beta, anchor="fixed"),
                                                                  p.ref_logits, A_BATCH, gen), log_every=steps, decay=True)
            total += jeffreys(p.log_probs(rows[-1]["logits"]).detach().exp(), target, beta).item()
        return total

    return min(A_LRS, key=final)


# (b) iterative BOND against fixed N at an equal sample budget
B_BATCH, B_LR, B_ROUNDS = 16, 0.03, 150  # prompts a step; Adam's rate; steps per iterative round


def claim_b(seeds: list[int], fixed_steps: int) -> list[dict]:
    """Fixed N = 64 runs ``fixed_steps`` steps of 1 + 64 samples a prompt; every method gets the same
    number of samples: N = 16 (1 + 16 a prompt) and iterative BOND (Best-of-2 of an anchor replaced by the
    policy every B_ROUNDS steps, its quantile from 4 anchor samples: 1 + 4 a prompt) run longer."""
    budget = fixed_steps * (1 + 64)
    methods = {"N=64": (Bond(n=64, k=64, beta=0.5, anchor="fixed"), 0),
               "N=16": (Bond(n=16, k=16, beta=0.5, anchor="fixed"), 0),
               "iterative n=2": (Bond(n=2, k=4, beta=0.5, anchor="swap"), B_ROUNDS)}
    out, finals = [], {m: [] for m in methods}
    for s in seeds:
        p = problem(s)
        for name, (algorithm, every) in methods.items():
            steps = budget // (1 + algorithm.anchor_samples)
            anchor, gen = [p.ref_logits.clone()], torch.Generator().manual_seed(1000 + s)

            def loss(logits, step, algorithm=algorithm, every=every, anchor=anchor, gen=gen):
                if every and step and step % every == 0:
                    anchor[0] = logits.detach().clone()
                return sampled_loss(p, logits, algorithm, anchor[0], B_BATCH, gen)

            rows = [{k: v for k, v in r.items() if k != "logits"} for r in adam(p, steps, B_LR, loss)]
            finals[name].append(rows)
            out.append({"kind": "curve", "claim": "b", "setting": name, "seed": s, "samples_per_prompt": budget, "rows": rows})
    for name in methods:
        out.append(summary("b", name, "quantile at the end of the budget", [r[-1]["quantile"] for r in finals[name]], seeds))
        out.append(summary("b", name, "kl_ref at the end of the budget", [r[-1]["kl_ref"] for r in finals[name]], seeds))
    for fixed in ("N=16", "N=64"):
        dq = [it[-1]["quantile"] - fx[-1]["quantile"] for it, fx in zip(finals["iterative n=2"], finals[fixed])]
        row = summary("b", f"iterative - {fixed}", "quantile at the end of the budget", dq, seeds)
        row["verdict"] = sign_verdict(*row["ci95"], better_below=False)
        out.append(row)
        # KL where the iterative run first reaches the fixed run's final quantile, minus the fixed run's KL.
        dkl = [_kl_at_quantile(it, fx[-1]["quantile"]) - fx[-1]["kl_ref"] for it, fx in zip(finals["iterative n=2"], finals[fixed])]
        row = summary("b", f"iterative - {fixed}", "kl_ref at the fixed run's final quantile", dkl, seeds)
        row["verdict"] = sign_verdict(*row["ci95"])
        out.append(row)
    return out


def _kl_at_quantile(rows: list[dict], q: float) -> float:
    point = at_first(rows, "quantile", q)
    return point["kl_ref"] if point else math.nan


# (c) EMA anchor against hard swaps, lag-matched, sampled
C_LAGS = ((0.01, 199), (0.02, 99), (0.05, 39))  # η (mean age (1−η)/η) against a swap interval of ≈ twice it
C_BATCHES, C_LR = (4, 16, 64), 0.05


def claim_c(seeds: list[int], rounds: int) -> list[dict]:
    """Each run lasts ``rounds`` swap intervals (6: a Best-of-64 target, past quantile 0.97)."""
    out = []
    for eta, every in C_LAGS:
        for batch in C_BATCHES:
            ratios = {"ema": [], "swap": []}
            for s in seeds:
                p = problem(s)
                curve = bon_curve(p, max_n=2000)
                for mode, kw in (("ema", {"eta": eta}), ("swap", {"swap_every": every})):
                    hist = run_jbond(p, rounds * every, C_LR, batch=batch, seed=1000 + s, **kw)
                    ratio, reached = front_ratio(hist, curve)
                    ratios[mode].append(ratio)
                    # 360 runs: their front ratios, not their trajectories (the figure is of the differences).
                    out.append({"kind": "curve", "claim": "c", "setting": f"{mode} eta={eta} swap_every={every} batch={batch}",
                                "seed": s, "front_ratio": ratio, "reached": reached, "rows": []})
            setting = f"eta={eta} vs swap_every={every}, batch={batch}"
            for mode in ratios:
                out.append(summary("c", f"{mode}: {setting}", "front ratio", ratios[mode], seeds))
            diff = [e - w for e, w in zip(ratios["ema"], ratios["swap"])]
            row = summary("c", setting, "front ratio, EMA - swap", diff, seeds)
            row["verdict"] = sign_verdict(*row["ci95"])
            out.append(row)
    return out


# (d) J-BOND against REINFORCE on both axes at equal KL
D_BETAS, D_STEPS, D_BATCH = (0.001, 0.01, 0.1, 1.0), 500, 16


def claim_d(seeds: list[int], steps: int) -> list[dict]:
    """Exact gradients, and sampled ones (D_BATCH prompts a step: J-BOND's 1 + 2 samples, REINFORCE's 2);
    per seed, J-BOND's trajectory interpolated at REINFORCE's final KL, minus REINFORCE's final point."""
    out = []
    for mode in ("exact", "sampled"):
        jbond = {}
        for s in seeds:
            hist = run_jbond(problem(s), steps, 0.05, eta=0.02, batch=D_BATCH if mode == "sampled" else 0, seed=1000 + s)
            jbond[s] = [{"step": 0, **problem(s).point(problem(s).ref_logits)}] + hist
            out.append({"kind": "curve", "claim": "d", "setting": f"{mode} jbond", "seed": s,
                        "rows": [{k: h[k] for k in ("step", "quantile", "reward", "kl_ref")} for h in jbond[s][::5]]})
        for beta_rl in D_BETAS:
            dq, dr = [], []
            for s in seeds:
                p = problem(s)
                rows = [{k: v for k, v in r.items() if k != "logits"}
                        for r in adam(p, steps, 0.05, _reinforce_loss(p, beta_rl, mode, 1000 + s))]
                out.append({"kind": "curve", "claim": "d", "setting": f"{mode} reinforce beta_rl={beta_rl}", "seed": s, "rows": rows})
                at = _at_kl(jbond[s], rows[-1]["kl_ref"])
                dq.append(at["quantile"] - rows[-1]["quantile"])
                dr.append(at["reward"] - rows[-1]["reward"])
            for metric, diffs in (("quantile", dq), ("reward", dr)):
                row = summary("d", f"{mode} beta_rl={beta_rl}", f"J-BOND - REINFORCE, {metric} at REINFORCE's final KL", diffs, seeds)
                row["verdict"] = sign_verdict(*row["ci95"], better_below=False)
                out.append(row)
    return out


def _reinforce_loss(p: SequenceProblem, beta_rl: float, mode: str, seed: int):
    ref_logp, gen = p.ref_probs().log(), torch.Generator().manual_seed(seed)

    def exact(logits, _step):  # ∇ of E_π[r] − β_RL·KL(π‖π_ref) in expectation
        logp = p.log_probs(logits)
        pi = logp.detach().exp()
        returns = p.rewards - beta_rl * (logp.detach() - ref_logp)
        return policy_gradient_loss(logp, returns, (pi * returns).sum(), sample_weight=pi)

    def sampled(logits, _step):
        return sampled_loss(p, logits, Reinforce(beta_rl=beta_rl), p.ref_logits, D_BATCH, gen)

    return exact if mode == "exact" else sampled


def _at_kl(rows: list[dict], target: float) -> dict:
    return at_first(rows, "kl_ref", target) or {"quantile": math.nan, "reward": math.nan}


# γ: does the regulariser move the quantile–KL(π_ref) front?
GAMMAS = (0.0, 0.5, 1.0, 2.0)


def claim_gamma(seeds: list[int], steps: int) -> list[dict]:
    out, ratios, drift = [], {g: [] for g in GAMMAS}, {g: [] for g in GAMMAS}
    for s in seeds:
        p = problem(s)
        curve = bon_curve(p, max_n=2000)
        for gamma in GAMMAS:
            hist = run_jbond(p, steps, 0.05, eta=0.02, gamma=gamma)
            ratio, reached = front_ratio(hist, curve)
            ratios[gamma].append(ratio)
            drift[gamma].append(float(np.mean([h["kl_anchor"] for h in hist])))
            out.append({"kind": "curve", "claim": "gamma", "setting": f"gamma={gamma}", "seed": s, "front_ratio": ratio,
                        "reached": reached, "rows": [{k: h[k] for k in ("step", "quantile", "kl_ref", "kl_anchor")} for h in hist[::20]]})
    for gamma in GAMMAS:
        out.append(summary("gamma", f"gamma={gamma}", "front ratio", ratios[gamma], seeds))
        out.append(summary("gamma", f"gamma={gamma}", "mean kl_anchor", drift[gamma], seeds))
        if gamma:
            for metric, values in (("front ratio", ratios), ("mean kl_anchor", drift)):
                diff = [a - b for a, b in zip(values[gamma], values[0.0])]
                row = summary("gamma", f"gamma={gamma} - gamma=0", metric, diff, seeds)
                # "reproduced" for the front: γ moves it (either way); for the drift: γ lowers it.
                row["verdict"] = sign_verdict(*row["ci95"])  # the front: below 0 is closer to the Best-of-N curve
                out.append(row)
    return out


FULL = {"a": (list(range(10)), 1000), "b": (list(range(10)), 150), "c": (list(range(20)), 6),
        "d": (list(range(10)), D_STEPS), "gamma": (list(range(10)), 2000)}
SMOKE = {"a": ([0, 1], 60), "b": ([0, 1], 10), "c": ([0, 1], 2), "d": ([0, 1], 60), "gamma": ([0, 1], 60)}
CLAIMS = {"a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "gamma": claim_gamma}


def plot(lines: list[dict], out: Path) -> None:
    """The figures of docs/results.md, from the JSON lines alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in lines if r["kind"] == "curve"]
    by = lambda claim, setting: [r for r in curves if r["claim"] == claim and r["setting"] == setting]  # noqa: E731

    def band(ax, runs, x, y, colour, label):
        seed_band(ax, [[row[x] for row in r["rows"]] for r in runs], [[row[y] for row in r["rows"]] for r in runs], colour, label)

    def bon(ax, claim):
        """Best-of-N of π_ref at each N, its quantile and KL averaged over the claim's problems (as the
        trajectories are)."""
        seeds = sorted({r["seed"] for r in curves if r["claim"] == claim})
        q, k = np.mean([bon_curve(problem(s), max_n=2000) for s in seeds], axis=0)
        ax.plot(k, q, "k--", lw=1, label=f"Best-of-N of π_ref (exact, mean over {len(seeds)} problems)")

    def finish(fig, ax, name, title, xlabel="KL(π ‖ π_ref)", ylabel="expected reward quantile against π_ref"):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    if any(r["claim"] == "a" for r in curves):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for i, beta in enumerate(A_BETAS):
            runs = by("a", f"sampled beta={beta}")
            for ax, key in zip(axes, ("forward_kl", "backward_kl")):
                band(ax, runs, "step", key, f"C{i}", f"β = {beta}")
        for ax in axes:
            ax.set_yscale("log")
        axes[0].set_title("(a) forward KL(π_BoN ‖ π), over problems", fontsize=9)
        axes[0].set_xlabel("step")
        finish(fig, axes[1], "claim_a_bond_beta.png", "backward KL(π ‖ π_BoN); factorised policy, N = 8, sampled",
               xlabel="step", ylabel="")
    if any(r["claim"] == "b" for r in curves):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        bon(ax, "b")
        for i, name in enumerate(("iterative n=2", "N=16", "N=64")):
            band(ax, by("b", name), "kl_ref", "quantile", f"C{i}", name)
        finish(fig, ax, "claim_b_iterative.png", "(b) equal sample budget, sampled estimators (problems as seeds)")
    if any(r["claim"] == "c" for r in curves):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for eta, every in C_LAGS:
            diffs = [next(r for r in lines if r["kind"] == "summary" and r["claim"] == "c"
                          and r["setting"] == f"eta={eta} vs swap_every={every}, batch={b}" and "EMA - swap" in r["metric"])
                     for b in C_BATCHES]
            mean, lo, hi = (np.array([d[k] if k == "mean" else d["ci95"][k] for d in diffs], dtype=float) for k in ("mean", 0, 1))
            ax.errorbar(C_BATCHES, mean, yerr=[mean - lo, hi - mean],
                        marker="o", capsize=3, label=f"η = {eta} vs swap every {every}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        finish(fig, ax, "claim_c_ema_vs_swap.png", "(c) EMA − swap: front ratio (KL / KL_BoN at q ∈ [0.8, 0.97]), 95 % CI",
               xlabel="prompts per step (batch)", ylabel="paired difference of the front ratio")
    if any(r["claim"] == "d" for r in curves):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key in zip(axes, ("quantile", "reward")):
            for i, setting in enumerate(["exact jbond"] + [f"exact reinforce beta_rl={b}" for b in D_BETAS]):
                band(ax, by("d", setting), "kl_ref", key, f"C{i}", setting.replace("exact ", ""))
            ax.set_ylabel(key)
        bon(axes[0], "d")
        axes[0].set_xlabel("KL(π ‖ π_ref)")
        axes[0].legend(fontsize=7)
        finish(fig, axes[1], "claim_d_reinforce.png", "(d) J-BOND against REINFORCE, exact gradients (problems as seeds)",
               ylabel="expected reward")
    if any(r["claim"] == "gamma" for r in curves):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        bon(ax, "gamma")
        for i, gamma in enumerate(GAMMAS):
            band(ax, by("gamma", f"gamma={gamma}"), "kl_ref", "quantile", f"C{i}", f"γ = {gamma}")
        ax.set_ylim(0.5, 1.0)
        finish(fig, ax, "claim_gamma_front.png", "γ: J-BOND's quantile–KL(π_ref) front (exact, problems as seeds)")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--task", choices=("simulator", "enumerable"), default="simulator")
    args.add_argument("--out", default="docs/results", help="a folder (simulator) or a JSON-lines file (enumerable)")
    args.add_argument("--claims", default=",".join(CLAIMS), help="comma-separated, of " + ", ".join(CLAIMS))
    args.add_argument("--smoke", action="store_true", help="2 seeds and short runs: checks the pipeline, not the claims")
    args.add_argument("--reduced", action="store_true", help="enumerable: 3 seeds, 80 steps, 2 learning rates, 8 held-out prompts (a shared machine)")
    args.add_argument("--retro", action="store_true", help="re-read OUT/paper_claims.jsonl with the trajectory metrics "
                      "(and run (c)'s exact-gradient control): writes OUT/paper_claims_retro.jsonl")
    args.add_argument("--plot-only", action="store_true", help="redraw the figures from OUT/paper_claims.jsonl")
    a = args.parse_args()
    if a.task == "enumerable":
        path = Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not a.plot_only:
            log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
            lines = [as_json(r) for r in enumerable_claims.run("smoke" if a.smoke else "reduced" if a.reduced else "full", log)]
            path.write_text("".join(json.dumps(r) + "\n" for r in lines))
            for r in lines:
                if r["kind"] == "claim":
                    print(json.dumps(r), flush=True)
        enumerable_claims.plot([json.loads(line) for line in path.read_text().splitlines()], path.parent)
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "paper_claims.jsonl"
    if a.retro:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        seeds = sorted({r["seed"] for r in lines if r["kind"] == "curve" and r["claim"] == "d"})
        start = time.perf_counter()
        rows = retro(lines, seeds, (SMOKE if a.smoke else FULL)["c"][1], D_BETAS, C_LR)
        for r in rows:
            r["wall_s"] = round(time.perf_counter() - start, 1)
            print(json.dumps(as_json(r)), flush=True)
        (out / "paper_claims_retro.jsonl").write_text("".join(json.dumps(as_json(r)) + "\n" for r in rows))
        return
    if not a.plot_only:
        lines = []
        for name in a.claims.split(","):
            seeds, size = (SMOKE if a.smoke else FULL)[name]
            start = time.perf_counter()
            rows = CLAIMS[name](seeds, size)
            took = time.perf_counter() - start
            for r in rows:
                if r["kind"] == "summary":
                    r["wall_s"] = round(took, 1)
                    print(json.dumps(as_json(r)), flush=True)
            print(f"claim {name}: {took:.0f} s", file=sys.stderr, flush=True)
            lines += rows
        path.write_text("".join(json.dumps(as_json(r)) + "\n" for r in lines))
    plot([json.loads(line) for line in path.read_text().splitlines()], out)


if __name__ == "__main__":
    main()
