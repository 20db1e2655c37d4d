"""Exact fronts of a finite-support task and the trajectory metrics read against them (plain torch and
numpy; the policies are given as log-probabilities over every response of every prompt).

Inputs are per prompt: ``ref_logp``, ``logp`` and ``rewards`` [P, Y], float64 (Y responses enumerated;
sums over 4,096 responses of probabilities down to 1e-12 keep 1e-13 relative in float64, where float32
would lose the tail's KL terms). Every quantity is the mean over the P prompts.

- The optimal front: π_λ ∝ π_ref·exp(r/λ) maximises E[r] − λ·KL(π‖π_ref) (Gibbs' variational
  principle), so for a common λ across prompts no policy has a higher mean reward at its mean KL.
- The Best-of-N curve of π_ref (Theorem 1, ties included).
- ``shortfall``: the mean over a KL grid of the front's reward minus the trajectory's reward where the
  trajectory first reaches that KL: 0 on the front, above 0 below it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .best_of_n import kl, log_bon_ratio


def ref_quantiles(ref_logp: Tensor, rewards: Tensor) -> tuple[Tensor, Tensor]:
    """p≤_ref(y) and p<_ref(y) of every response [P, Y], by sorting (best_of_n.exact_quantiles' values
    without its Y × Y matrix: 4,096² a prompt is too large to repeat)."""
    order = rewards.argsort(-1)
    sorted_r = rewards.gather(-1, order).contiguous()
    cum = torch.cat([torch.zeros_like(ref_logp[:, :1]), ref_logp.exp().gather(-1, order).cumsum(-1)], dim=-1)
    le = cum.gather(-1, torch.searchsorted(sorted_r, rewards.contiguous(), right=True))
    lt = cum.gather(-1, torch.searchsorted(sorted_r, rewards.contiguous(), right=False))
    return le, lt


def point(logp: Tensor, ref_logp: Tensor, rewards: Tensor, p_le: Tensor | None = None) -> dict:
    """Where a policy stands, exactly: the prompts' mean E[p≤_ref], E[r] and KL(π‖π_ref) (``p_le``:
    ``ref_quantiles``' first, when the caller has it)."""
    probs, ref = logp.exp(), ref_logp.exp()
    if p_le is None:
        p_le = ref_quantiles(ref_logp, rewards)[0]
    return {"quantile": (probs * p_le).sum(-1).mean().item(), "reward": (probs * rewards).sum(-1).mean().item(),
            "kl_ref": kl(probs, ref).mean().item()}


def tilted(ref_logp: Tensor, rewards: Tensor, lam: float) -> Tensor:
    """log π_λ ∝ log π_ref + r/λ, normalised per prompt."""
    return torch.log_softmax(ref_logp + rewards / lam, dim=-1)


FRONT_LAMBDAS = np.geomspace(1e-3, 1e2, 400)  # λ from nearly the argmax (KL ≈ −log π_ref(y*)) to π_ref


def optimal_front(ref_logp: Tensor, rewards: Tensor, lambdas=FRONT_LAMBDAS) -> tuple[np.ndarray, np.ndarray]:
    """(KL, E[r]) of π_λ on ``lambdas``, sorted by KL ascending (both rise as λ falls)."""
    p_le = ref_quantiles(ref_logp, rewards)[0]
    pts = [point(tilted(ref_logp, rewards, lam), ref_logp, rewards, p_le) for lam in sorted(lambdas, reverse=True)]
    return np.array([p["kl_ref"] for p in pts]), np.array([p["reward"] for p in pts])


def bon_curve(ref_logp: Tensor, rewards: Tensor, ns) -> dict:
    """The Best-of-N curve of π_ref at each N of ``ns``: mean quantile, reward and KL(π_BoN‖π_ref)."""
    p_le, p_lt = ref_quantiles(ref_logp, rewards)
    pts = [point(ref_logp + log_bon_ratio(p_le, p_lt, n), ref_logp, rewards, p_le) for n in ns]
    return {"n": list(ns), **{k: np.array([p[k] for p in pts]) for k in ("quantile", "reward", "kl_ref")}}


def interp_within(x: float, xs: np.ndarray, ys: np.ndarray, what: str) -> float:
    """Linear interpolation on an ascending ``xs``; beyond its ends it refuses (np.interp would repeat
    the end value: a ratio or shortfall read there would be silently wrong)."""
    if not xs[0] <= x <= xs[-1]:
        raise ValueError(f"{what}: {x:.6g} lies outside the curve's range [{xs[0]:.6g}, {xs[-1]:.6g}]")
    return float(np.interp(x, xs, ys))


def first_reach(rows: list[dict], key: str, value: float) -> dict | None:
    """The trajectory's point where ``key`` first reaches ``value`` (every float linear between the
    two logged points around it), or None if it never does."""
    for i, h in enumerate(rows):
        if h[key] >= value:
            if i == 0:
                return dict(h)
            a = rows[i - 1]
            w = (value - a[key]) / (h[key] - a[key])
            return {k: (1 - w) * a[k] + w * h[k] for k in h if isinstance(h[k], float)}
    return None


def shortfall(rows: list[dict], front: tuple[np.ndarray, np.ndarray], kl_grid) -> tuple[float, float]:
    """The mean over ``kl_grid`` of front reward − trajectory reward, the trajectory read where it
    first reaches each KL: (that mean over the KLs reached, NaN if the run does not reach the whole
    grid; the fraction of the grid reached). Comparing two runs over different ranges would mix the
    metric with the range, so a partial run has no value."""
    gaps = []
    for k in kl_grid:
        at = first_reach(rows, "kl_ref", k)
        if at is None:
            break
        gaps.append(interp_within(k, *front, "shortfall's KL") - at["reward"])
    reached = len(gaps) / len(kl_grid)
    return (float(np.mean(gaps)) if reached == 1 else math.nan), reached


def envelope(runs: list[list[dict]], kl_grid) -> list[dict]:
    """The best reward any of ``runs`` has where it first reaches each KL of the grid (a trajectory of
    the best checkpoints of a sweep: the grid's KLs that no run reaches are left out)."""
    out = []
    for k in kl_grid:
        hits = [at["reward"] for at in (first_reach(r, "kl_ref", k) for r in runs) if at is not None]
        if not hits:
            break
        out.append({"kl_ref": float(k), "reward": max(hits)})
    return out


def kl_ratio_to_bon(rows: list[dict], curve: dict, q_grid) -> tuple[float, float]:
    """The mean over ``q_grid`` of KL(π‖π_ref) where the trajectory first reaches quantile q, over the
    Best-of-N KL at q: (that mean, NaN unless the whole grid is reached; the fraction reached)."""
    ratios = []
    for q in q_grid:
        at = first_reach(rows, "quantile", q)
        if at is None:
            break
        ratios.append(at["kl_ref"] / interp_within(q, curve["quantile"], curve["kl_ref"], "Best-of-N quantile"))
    reached = len(ratios) / len(q_grid)
    return (float(np.mean(ratios)) if reached == 1 else math.nan), reached
