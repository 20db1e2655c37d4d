"""What every claim experiment of benchmarks/paper_claims.py reports with: the problem a seed names, a
setting's per-seed summary with its t-interval, the sign verdict of a paired difference, strict JSON."""

from __future__ import annotations

import math

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
