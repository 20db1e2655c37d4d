"""The paper's plot: the reward quantile against π_ref over KL(π‖π_ref), beside the task's Best-of-N."""

from __future__ import annotations

import math
from pathlib import Path


def bon_curve(max_n: int = 2000) -> tuple[list[float], list[float]]:
    """(KL, quantile) of Best-of-N for N = 1..max_n with continuous rewards: log N − (N−1)/N and N/(N+1)."""
    ns = [1 + i * i / 50 for i in range(int(math.sqrt(50 * max_n)))]
    return [math.log(n) - (n - 1) / n for n in ns], [n / (n + 1) for n in ns]


def task_bon_curve(ref_rewards: list[list[float]]) -> tuple[list[float], list[float]]:
    """(KL, quantile) of Best-of-N on this task, N < k: Theorem 1's KL on each held-out prompt's empirical
    reference rewards (ties included) and the unbiased Best-of-N quantile, averaged over the prompts."""
    import torch

    from megatron_bond.bond.estimates import curve_ns, empirical_bon_curve

    rewards = torch.tensor(ref_rewards, dtype=torch.float64)
    kl, q = empirical_bon_curve(rewards, curve_ns(rewards.shape[-1]))
    return kl.mean(0).tolist(), q.mean(0).tolist()


def plot_quantile_vs_kl(evals: list[dict], ref_rewards: list[list[float]], path: Path, title: str,
                        samples: list[tuple[str, str, str]] = (), caption: str = "") -> Path:
    """``evals``: the evaluation rows of metrics.jsonl; ``ref_rewards``: each held-out prompt's k
    reference rewards (samples/step-0.jsonl); ``samples``: (prompt, before, after) texts, shown under the
    plot with ``caption``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    below = 0.2 + 0.14 * (2 * len(samples) + 2)  # inches for the caption and sample lines at 7 pt
    fig, (ax, text) = plt.subplots(2, 1, figsize=(7, 4.2 + below), height_ratios=[4.2, below])
    kl, q = task_bon_curve(ref_rewards)
    ax.plot(kl, q, color="black", label="Best-of-N of π_ref on this task (N < k: Theorem 1 on its k samples, ties included)")
    kl, q = bon_curve()
    ax.plot(kl, q, color="grey", linestyle="--", lw=1, label="Best-of-N, continuous rewards (log N − (N−1)/N, N/(N+1))")
    ns = [int(k.split("@")[1]) for k in evals[0] if k.startswith("bon/quantile@")]
    ax.plot([evals[0][f"bon/kl@{n}"] for n in ns], [evals[0][f"bon/quantile@{n}"] for n in ns], "s", color="black",
            markersize=4, label="measured Best-of-N, N = " + ", ".join(map(str, ns)))
    ax.errorbar([r["kl/ref"] for r in evals], [r["quantile/ref"] for r in evals],
                xerr=[r["kl/ref_se"] or 0 for r in evals], yerr=[r["quantile/ref_se"] or 0 for r in evals],
                marker="o", markersize=3, capsize=2, label="J-BOND (± 1 standard error over prompts)")
    ax.set_xlim(0, max(0.5, 1.15 * max(r["kl/ref"] + (r["kl/ref_se"] or 0) for r in evals)))
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("KL(π ‖ π_ref)  (kl/ref)")
    ax.set_ylabel("reward quantile against π_ref  (quantile/ref)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    text.axis("off")
    lines = [caption, "samples: prompt | before (π_ref) → after (J-BOND)"]
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
