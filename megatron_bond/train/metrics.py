"""Where a run's numbers go (rank 0 only): ``metrics.jsonl`` (one JSON object per step, and per
evaluation with ``"eval": true``), wandb (offline by default; online when the recipe says so), and a
tqdm progress bar with ETA."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from megatron_bond.config import Config

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    """JSON-able scalars: tensors become floats, and non-finite floats null (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    def __init__(self, cfg: Config, out_dir: Path, rank: int, start_step: int):
        self.enabled = rank == 0
        self.wandb = None
        self.bar = None
        if not self.enabled:
            return
        path = out_dir / METRICS_FILE
        self._truncate_after(path, start_step)
        self.file = open(path, "a", buffering=1)
        if cfg.logging.wandb_mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=cfg.logging.wandb_project, name=cfg.run.name, dir=str(out_dir),
                                    config=cfg.to_dict(), mode=cfg.logging.wandb_mode, resume="allow",
                                    id=_run_id(out_dir))
        if cfg.logging.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.run.name, unit="step",
                            dynamic_ncols=True)

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint: drop the rows a crash left beyond it."""
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if len(kept) != len(rows):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in row.items()}
        self.file.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            prefix = "eval/" if row.get("eval") else ""
            self.wandb.log({prefix + k: v for k, v in row.items() if k not in ("step", "eval")}, step=row["step"])
        if self.bar is not None:
            if row.get("eval"):
                self.bar.write(f"eval step {row['step']}: quantile/ref {row['quantile/ref']:.3f}  "
                               f"kl/ref {row['kl/ref']:.4f}  reward/policy {row['reward/policy']:.4f}")
            else:
                self.bar.update(row["step"] - self.bar.n)
                self.bar.set_postfix(loss=f"{row['loss']:.3g}", reward=f"{row['reward/policy']:.3g}",
                                     kl_anchor=f"{row['kl/anchor']:.3g}", refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.file.close()


def _run_id(out_dir: Path) -> str:
    """One wandb run per output directory, kept across resumes."""
    path = out_dir / "wandb_run_id"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
