"""The BOND paper's claims, reproduced on sequence problems small enough to enumerate (so every KL is
exact), with the package's own losses (megatron_bond/bond/). Writes the plots of docs/results.md and
one JSON line per run.

    python benchmarks/paper_claims.py --out docs/results        # about 70 s on a 2-core CPU

Problems: SequenceProblem.random(vocab=4, length=3, seed) (64 sequences, a random reference policy,
distinct rewards rescaled to [0, 1]), seeds 0, 1, 2.
(a) BOND, N = 8, β ∈ {0, 0.5, 1}, sampled estimators (64 samples a step; the backward term's quantile
    from k = 16 reference samples): exact forward and backward KL to π_BoN over training.
(b) Iterative BOND (Best-of-2 of an anchor replaced by the policy every 100 steps) against BOND with a
    fixed N ∈ {4, 8, 16}, exact gradients: quantile and KL(π‖π_ref) against the Best-of-N curve.
(c) J-BOND with an EMA anchor (η = 0.02) against a hard swap every 50 steps, exact expectations.
(d) J-BOND against REINFORCE (return r − β_RL·(log π − log π_ref), exact expectations) for
    β_RL ∈ {0.001, 0.01, 0.1, 1}; and J-BOND's γ ∈ {0, 0.5, 1, 2} against KL to the anchor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_bond.bond import bon_probs, kl, policy_gradient_loss  # noqa: E402
from megatron_bond.bond.simulator import (  # noqa: E402
    SequenceProblem,
    bon_curve,
    exact_jeffreys_loss,
    run_jbond,
    sampled_jeffreys_loss,
)

SEEDS = (0, 1, 2)


def problem(seed: int) -> SequenceProblem:
    p = SequenceProblem.random(vocab=4, length=3, seed=seed)
    p.rewards = p.rewards / p.rewards.max()
    return p


def claim_a(seed: int, beta: float, n: int = 8, steps: int = 300, batch: int = 64, k: int = 16) -> list[dict]:
    p = problem(seed)
    target = bon_probs(p.ref_probs(), p.rewards, n)
    gen = torch.Generator().manual_seed(100 + seed)
    logits = p.ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.02)
    rows = []
    for step in range(steps + 1):
        pi = p.log_probs(logits).detach().exp()
        if step % 10 == 0:
            rows.append({"step": step, "forward_kl": kl(target, pi).item(), "backward_kl": kl(pi, target).item()})
        if step == steps:
            break
        opt.zero_grad()
        sampled_jeffreys_loss(p, logits, n, k, batch, beta, gen).backward()
        opt.step()
    return rows


def _trajectory(p: SequenceProblem, logits) -> dict:
    pi = p.log_probs(logits).detach().exp()
    return {"kl_ref": kl(pi, p.ref_probs()).item(), "quantile": p.quantile(pi).item()}


def _descend(p: SequenceProblem, steps: int, loss_of) -> list[dict]:
    """Adam (lr 0.05) on ``loss_of(logits, step)`` from π_ref; quantile and KL(π‖π_ref) every 10 steps."""
    logits = p.ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    rows = []
    for step in range(steps + 1):
        if step % 10 == 0:
            rows.append({"step": step, **_trajectory(p, logits)})
        if step == steps:
            return rows
        opt.zero_grad()
        loss_of(logits, step).backward()
        opt.step()


def claim_b(seed: int, mode: str, steps: int = 600, every: int = 100) -> list[dict]:
    """mode: "iterative" (Best-of-2 of an anchor replaced by the policy every ``every`` steps) or "N=4" etc."""
    p = problem(seed)
    anchor = [p.ref_logits.clone()]

    def loss(logits, step):
        if mode == "iterative":
            if step and step % every == 0:
                anchor[0] = logits.detach().clone()
            target = bon_probs(p.log_probs(anchor[0]).exp(), p.rewards, 2)
        else:
            target = bon_probs(p.ref_probs(), p.rewards, int(mode.split("=")[1]))
        return exact_jeffreys_loss(p, logits, target, 0.5)

    return _descend(p, steps, loss)


def claim_d_reinforce(seed: int, beta_rl: float, steps: int = 500) -> list[dict]:
    """REINFORCE in exact expectation: ∇ of E_π[r] − β_RL·KL(π‖π_ref)."""
    p = problem(seed)
    ref_logp = p.ref_probs().log()

    def loss(logits, _step):
        logp = p.log_probs(logits)
        pi = logp.detach().exp()
        returns = p.rewards - beta_rl * (logp.detach() - ref_logp)
        return policy_gradient_loss(logp, returns, (pi * returns).sum(), sample_weight=pi)

    return _descend(p, steps, loss)


def jbond(seed: int, steps: int = 500, **kw) -> list[dict]:
    rows = run_jbond(problem(seed), steps=steps, lr=0.05, **kw)
    return [r for r in rows if r["step"] % 10 == 0]


def _mean(runs: list[list[dict]], key: str) -> list[float]:
    return [sum(r[i][key] for r in runs) / len(runs) for i in range(len(runs[0]))]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--out", default="docs/results")
    out = Path(args.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = []

    def record(claim: str, setting: str, runs: list[list[dict]], **final):
        """final: name -> (row key, row index; None for the mean over all rows). One line with the mean
        over seeds and each seed's value (the spread that a claimed difference must exceed)."""
        row = {"claim": claim, "setting": setting, "seeds": list(SEEDS)}
        for name, (key, index) in final.items():
            per_seed = [run[index][key] if index is not None else sum(r[key] for r in run) / len(run) for run in runs]
            row[name], row[f"{name}_per_seed"] = sum(per_seed) / len(per_seed), per_seed
        summary.append(row)
        print(json.dumps(row), flush=True)

    # (a)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for beta in (0.0, 0.5, 1.0):
        runs = [claim_a(s, beta) for s in SEEDS]
        steps = [r["step"] for r in runs[0]]
        for ax, key in zip(axes, ("forward_kl", "backward_kl")):
            ax.plot(steps, _mean(runs, key), label=f"β = {beta}")
        record("a", f"BOND N=8 beta={beta}", runs, forward_kl=("forward_kl", -1), backward_kl=("backward_kl", -1),
               forward_kl_mid=("forward_kl", 10), backward_kl_mid=("backward_kl", 10))
    for ax, title in zip(axes, ("forward KL(π_BoN ‖ π)", "backward KL(π ‖ π_BoN)")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("(a) BOND, N = 8, sampled estimators: exact divergences to π_BoN (mean of 3 seeds)")
    fig.tight_layout()
    fig.savefig(out / "claim_a_bond_beta.png", dpi=110)
    plt.close(fig)

    # (b), (c), (d): quantile against KL(π‖π_ref), with the Best-of-N curve of seed 0's problem
    def qkl_plot(curves: dict[str, list[list[dict]]], name: str, title: str, kl_key: str = "kl_ref"):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        q, k = bon_curve(problem(0), max_n=2000)
        ax.plot(k, q, "k--", label="Best-of-N of π_ref (exact, seed 0)")
        for label, runs in curves.items():
            ax.plot(_mean(runs, kl_key), _mean(runs, "quantile"), marker=".", markersize=3, label=label)
        ax.set_xlabel("KL(π ‖ π_ref)")
        ax.set_ylabel("expected reward quantile against π_ref")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    curves = {}
    for mode in ("iterative", "N=4", "N=8", "N=16"):
        runs = [claim_b(s, mode) for s in SEEDS]
        label = "iterative BOND (Best-of-2, anchor swapped every 100 steps)" if mode == "iterative" else f"BOND, fixed {mode}"
        curves[label] = runs
        record("b", mode, runs, quantile=("quantile", -1), kl_ref=("kl_ref", -1), quantile_at_300=("quantile", 30))
    qkl_plot(curves, "claim_b_iterative.png", "(b) iterative BOND against fixed N (exact, mean of 3 seeds)")

    curves = {}
    for label, kw in (("J-BOND, EMA anchor η = 0.02", {"eta": 0.02}), ("J-BOND, anchor swapped every 50 steps", {"swap_every": 50})):
        runs = [jbond(s, **kw) for s in SEEDS]
        curves[label] = runs
        record("c", label, runs, quantile=("quantile", -1), kl_ref=("kl_ref", -1))
    qkl_plot(curves, "claim_c_ema_vs_swap.png", "(c) J-BOND: EMA anchor against hard swaps (exact, mean of 3 seeds)")

    curves = {"J-BOND (β = 0.5, η = 0.02)": curves["J-BOND, EMA anchor η = 0.02"]}
    for beta_rl in (0.001, 0.01, 0.1, 1.0):
        runs = [claim_d_reinforce(s, beta_rl) for s in SEEDS]
        curves[f"REINFORCE β_RL = {beta_rl}"] = runs
        record("d", f"REINFORCE beta_rl={beta_rl}", runs, quantile=("quantile", -1), kl_ref=("kl_ref", -1))
    qkl_plot(curves, "claim_d_reinforce.png", "(d) J-BOND against REINFORCE (exact, mean of 3 seeds)")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for gamma in (0.0, 0.5, 1.0, 2.0):
        runs = [jbond(s, steps=300, eta=0.02, gamma=gamma) for s in SEEDS]
        ax.plot([r["step"] for r in runs[0]], _mean(runs, "kl_anchor"), label=f"γ = {gamma}")
        record("d-gamma", f"gamma={gamma}", runs, kl_anchor_mean=("kl_anchor", None), quantile=("quantile", -1))
    ax.set_xlabel("step")
    ax.set_ylabel("KL(π ‖ π_anchor)")
    ax.set_title("(d) J-BOND's γ against the drift from the anchor (exact, mean of 3 seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "claim_d_gamma.png", dpi=110)
    plt.close(fig)

    (out / "paper_claims.jsonl").write_text("".join(json.dumps(r) + "\n" for r in summary))


if __name__ == "__main__":
    main()
