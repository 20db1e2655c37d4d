"""The paper's plot: the reward quantile against π_ref over KL(π‖π_ref), beside the Best-of-N curve."""

from __future__ import annotations

import math
from pathlib import Path


def bon_curve(max_n: int = 2000) -> tuple[list[float], list[float]]:
    """(KL, quantile) of Best-of-N for N = 1..max_n: log N − (N−1)/N and N/(N+1)."""
    ns = [1 + i * i / 50 for i in range(int(math.sqrt(50 * max_n)))]
    return [math.log(n) - (n - 1) / n for n in ns], [n / (n + 1) for n in ns]


def plot_quantile_vs_kl(evals: list[dict], path: Path, title: str,
                        samples: list[tuple[str, str, str]] = ()) -> Path:
    """``evals``: the evaluation rows of metrics.jsonl (kl/ref, quantile/ref); ``samples``: (prompt,
    before, after) texts, shown under the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    below = 0.2 + 0.14 * (2 * len(samples) + 1)  # inches for the sample lines at 7 pt
    fig, (ax, text) = plt.subplots(2, 1, figsize=(7, 4.2 + below), height_ratios=[4.2, below])
    kl, q = bon_curve()
    ax.plot(kl, q, color="black", linestyle="--", label="Best-of-N (log N − (N−1)/N, N/(N+1))")
    ax.plot([r["kl/ref"] for r in evals], [r["quantile/ref"] for r in evals], marker="o", markersize=3, label="J-BOND")
    ax.set_xlim(0, max(0.5, 1.15 * max(r["kl/ref"] for r in evals)))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    text.axis("off")
    lines = ["samples: prompt | before (π_ref) → after (J-BOND)"]
    for prompt, before, after in samples:
        lines += [f"{prompt} | {_short(before)}", f"{' ' * len(prompt)} → {_short(after)}"]
    text.text(0, 1, "\n".join(lines), family="monospace", fontsize=7, va="top", transform=text.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(sample: str, width: int = 60) -> str:
    sample = " ".join(sample.split())
    return sample if len(sample) <= width else sample[: width - 1] + "…"
