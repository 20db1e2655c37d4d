"""Tolerances that follow from floating-point arithmetic, so that they hold on any x86-64 CPU.

Two layouts (TP=1 against TP=2, PP=2, DP=2, or one BLAS kernel against another on another CPU) compute
the same sums in different orders. A sum of n fp32 terms, reordered, changes by at most (n−1)·u·Σ|terms|
with u = 2^-24 (Higham, "Accuracy and Stability of Numerical Algorithms", §4.2: the worst case, whatever
order and blocking a kernel picks). A value that comes out of ``depth`` such sums in a chain, each of at
most ``terms`` terms, on tensors whose sums of absolute terms are of the order of ``scale`` (the tensors'
largest entries: the test models are well scaled, with O(1) activations), therefore moves by at most
``depth · terms · u · scale``. That is the bound below: worst-case, so no CPU's rounding can exceed it,
yet orders of magnitude below what a layout bug does (a missing all-reduce, a doubled shard, a wrong
padding row all change some value by O(1) of its scale).
"""

from __future__ import annotations

import torch

U32 = 2.0**-24  # fp32 unit roundoff
U16 = 2.0**-11  # fp16 unit roundoff
U_BF16 = 2.0**-8  # bf16 unit roundoff


def reorder_bound(scale: float, terms: int, depth: int) -> float:
    """Largest change of an fp32 result when ``depth`` chained sums of ≤ ``terms`` terms are reordered."""
    return depth * terms * U32 * scale


def max_abs(t) -> float:
    return t.abs().max().item() if isinstance(t, torch.Tensor) else abs(t)


def assert_reorder_close(got, ref, terms: int, depth: int, what: str = "") -> None:
    """|got − ref| ≤ reorder_bound(max|ref|, terms, depth), tensor-wise (or for two floats)."""
    bound = reorder_bound(max_abs(ref), terms, depth)
    diff = max_abs(got - ref) if isinstance(ref, torch.Tensor) else abs(got - ref)
    assert diff <= bound, f"{what}: |Δ| = {diff:.3e} exceeds the reordering bound {bound:.3e}"


def adam_first_step_bound(g: torch.Tensor, g_other: torch.Tensor, lr: float, eps: float,
                          p: torch.Tensor) -> torch.Tensor:
    """Per element, how far two first Adam(W) steps may land apart given their two (clipped) gradients.

    Step 1 of Adam has m̂ = g and v̂ = g², so the update is lr·u(g) with u(g) = g / (|g| + eps): ±lr where
    |g| ≫ eps and proportional to g near eps. Where g and g_other share a sign, the mean value theorem
    with u'(x) = eps / (|x| + eps)² bounds |u(g) − u(g_other)| by eps·|g − g_other| / (min(|g|, |g_other|)
    + eps)²; where the signs differ, by |u(g)| + |u(g_other)|. On top, the step p − lr·wd·p − lr·u rounds
    (three fp32 operations on values ≤ |p| + lr: at most 3·u·(|p| + lr), doubled for the two runs).
    """
    a, b = g.abs(), g_other.abs()
    same_sign = torch.sign(g) == torch.sign(g_other)
    smooth = eps * (g - g_other).abs() / (torch.minimum(a, b) + eps) ** 2
    jump = a / (a + eps) + b / (b + eps)
    return lr * torch.where(same_sign, torch.minimum(smooth, jump), jump) + 6 * U32 * (p.abs() + lr)
