"""The paper's plot: the reward quantile against π_ref over KL(π‖π_ref), beside the Best-of-N curve."""

from __future__ import annotations

import math
from pathlib import Path


def bon_curve(max_n: int = 2000) -> tuple[list[float], list[float]]:
    """(KL, quantile) of Best-of-N for N = 1..max_n: log N − (N−1)/N and N/(N+1)."""
    ns = [1 + i * i / 50 for i in range(int(math.sqrt(50 * max_n)))]
    return [math.log(n) - (n - 1) / n for n in ns], [n / (n + 1) for n in ns]


def plot_quantile_vs_kl(evals: list[dict], path: Path, title: str, extra: dict[str, list[dict]] | None = None) -> Path:
    """``evals``: the evaluation rows of metrics.jsonl (kl/ref, quantile/ref); ``extra``: more runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    kl, q = bon_curve()
    ax.plot(kl, q, color="black", linestyle="--", label="Best-of-N (log N − (N−1)/N, N/(N+1))")
    runs = {"J-BOND": evals, **(extra or {})}
    for name, rows in runs.items():
        ax.plot([r["kl/ref"] for r in rows], [r["quantile/ref"] for r in rows], marker="o", markersize=3, label=name)
    top = max(max(r["kl/ref"] for r in rows) for rows in runs.values())
    ax.set_xlim(0, max(0.5, 1.15 * top))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
