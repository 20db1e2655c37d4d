"""The simulator's results (benchmarks/paper_claims.py) re-read with the trajectory metrics of issue 41,
from the curves in OUT/paper_claims.jsonl: `paper_claims.py --retro` runs this."""

from __future__ import annotations

import numpy as np

from benchmarks.claims_report import problem, sign_verdict, summary
from megatron_bond.bond.fronts import envelope, kl_ratio_to_bon, optimal_front, shortfall
from megatron_bond.bond.simulator import bon_curve, front_ratio, run_jbond

RETRO_KL, RETRO_Q = np.linspace(0.05, 3.0, 60), np.linspace(0.8, 0.94, 15)


def retro(lines: list[dict], seeds: list[int], steps: int, d_betas: tuple, c_lr: float) -> list[dict]:
    """(d): J-BOND's and REINFORCE's reward shortfall from the optimal front over KL ∈ [0.05, 3], per
    problem, exact and sampled gradients. (b): iterative BOND's and N = 16's KL over the Best-of-N KL along
    the path, q ∈ [0.8, 0.94]. (c)'s control: EMA η = 0.02 against swaps every 99 steps with exact
    gradients (``steps`` swap intervals; the sampled runs are claim c's)."""
    out, curves = [], [r for r in lines if r["kind"] == "curve"]
    rows = lambda claim, setting, s: next(r["rows"] for r in curves if r["claim"] == claim and r["setting"] == setting and r["seed"] == s)  # noqa: E731
    fronts = {}
    for s in seeds:
        p = problem(s)
        fronts[s] = optimal_front(p.ref_probs().log().unsqueeze(0), p.rewards.unsqueeze(0))
    metric = "reward shortfall from the optimal front, mean over KL in [0.05, 3]"
    for mode in ("exact", "sampled"):
        jb = [shortfall(rows("d", f"{mode} jbond", s), fronts[s], RETRO_KL)[0] for s in seeds]
        out.append(summary("d-retro", f"{mode} jbond", metric, jb, seeds))
        for beta in d_betas:
            rf = [shortfall(rows("d", f"{mode} reinforce beta_rl={beta}", s), fronts[s], RETRO_KL)[0] for s in seeds]
            out.append(summary("d-retro", f"{mode} reinforce beta_rl={beta}", metric, rf, seeds))
            row = summary("d-retro", f"{mode} jbond - reinforce beta_rl={beta}", metric, [a - b for a, b in zip(jb, rf)], seeds)
            row["verdict"] = sign_verdict(*row["ci95"])
            out.append(row)
        env = [shortfall(envelope([rows("d", f"{mode} reinforce beta_rl={b}", s) for b in d_betas], RETRO_KL), fronts[s], RETRO_KL)[0]
               for s in seeds]
        row = summary("d-retro", f"{mode} jbond - reinforce envelope over {d_betas}", metric, [a - b for a, b in zip(jb, env)], seeds)
        row["verdict"] = sign_verdict(*row["ci95"])
        out.append(row)
    ratio = {name: [] for name in ("iterative n=2", "N=16")}
    for s in seeds:
        q, k = bon_curve(problem(s), max_n=400)  # Best-of-399 is past q = 0.99 on every problem
        for name in ratio:
            ratio[name].append(kl_ratio_to_bon(rows("b", name, s), {"quantile": np.array(q), "kl_ref": np.array(k)}, RETRO_Q)[0])
    for name in ratio:
        out.append(summary("b-retro", name, "KL over the Best-of-N KL, mean over q in [0.8, 0.94]", ratio[name], seeds))
    row = summary("b-retro", "iterative n=2 - N=16", "KL over the Best-of-N KL, mean over q in [0.8, 0.94]",
                  [a - b for a, b in zip(ratio["iterative n=2"], ratio["N=16"])], seeds)
    row["verdict"] = sign_verdict(*row["ci95"])
    out.append(row)
    if not steps:
        return out
    ratios = {"ema": [], "swap": []}
    for s in seeds:
        p = problem(s)
        curve = bon_curve(p, max_n=2000)
        for mode, kw in (("ema", {"eta": 0.02}), ("swap", {"swap_every": 99})):
            ratios[mode].append(front_ratio(run_jbond(p, steps * 99, c_lr, seed=1000 + s, **kw), curve)[0])
    for mode in ratios:
        out.append(summary("c-exact", f"{mode}: eta=0.02 vs swap_every=99, exact gradients", "front ratio", ratios[mode], seeds))
    row = summary("c-exact", "eta=0.02 vs swap_every=99, exact gradients", "front ratio, EMA - swap",
                  [a - b for a, b in zip(ratios["ema"], ratios["swap"])], seeds)
    row["verdict"] = sign_verdict(*row["ci95"])
    out.append(row)
    return out
