"""What every claim experiment of benchmarks/paper_claims.py reports with: the problem a seed names, a
setting's per-seed summary with its t-interval, the sign verdict of a paired difference, strict JSON, and
the figures' seed bands."""

from __future__ import annotations

import math

import numpy as np

from megatron_bond.bond.estimates import mean_interval
from megatron_bond.bond.simulator import SequenceProblem
from megatron_bond.jsonl import strict


def problem(seed: int, factorised: bool = False) -> SequenceProblem:
    p = SequenceProblem.random(vocab=4, length=3, seed=seed, factorised=factorised)
    p.rewards = p.rewards / p.rewards.max()
    return p


def summary(claim: str, setting: str, metric: str, per_seed: list[float], seeds: list[int], **extra) -> dict:
    """One setting's per-seed values, their mean and 95 % t-interval; a seed whose value is NaN (a run
    that never reached the point compared) is left out of both and counted in ``missing``."""
    finite = [v for v in per_seed if math.isfinite(v)]
    mean, lo, hi = mean_interval(finite) if finite else (math.nan, math.nan, math.nan)
    return {"kind": "summary", "claim": claim, "setting": setting, "metric": metric, "seeds": seeds,
            "per_seed": per_seed, "mean": mean, "ci95": [lo, hi], "missing": len(per_seed) - len(finite),
            "verdict": None, **extra}


def sign_verdict(lo: float, hi: float, better_below: bool = True) -> str:
    """'reproduced' when the interval of a paired difference lies on the claimed side of 0, 'not
    reproduced' on the other, 'inconclusive' when it holds 0 (or was not measured)."""
    if hi < 0 or lo > 0:
        return "reproduced" if (hi < 0) == better_below else "not reproduced"
    return "inconclusive"


def as_json(row: dict) -> dict:
    """Strict JSON, a curve's points rounded to 6 decimals (their figure needs no more)."""
    return {k: strict(v, 6 if k == "rows" else None) for k, v in row.items()}


def seed_band(ax, xs: list, ys: list, colour: str, label: str) -> None:
    """Each seed's trajectory (thin lines), their mean and a 95 % Student-t band over seeds at each logged
    point (the points every seed logged; None, a value a run did not reach, is left out of that point)."""
    n = min(len(x) for x in xs)
    as_array = lambda rows: np.array([[np.nan if v is None else v for v in r[:n]] for r in rows], dtype=float)  # noqa: E731
    xs, ys = as_array(xs), as_array(ys)
    for x, y in zip(xs, ys):
        ax.plot(x, y, color=colour, lw=0.5, alpha=0.4)
    stats = np.array([mean_interval(col[np.isfinite(col)]) if np.isfinite(col).any() else (np.nan,) * 3 for col in ys.T])
    x = np.nanmean(xs, axis=0)
    ax.plot(x, stats[:, 0], color=colour, lw=1.8, label=f"{label} (mean of {len(ys)} seeds, 95 % band)")
    ax.fill_between(x, stats[:, 1], stats[:, 2], color=colour, alpha=0.15)
