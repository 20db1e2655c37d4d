"""Where a run's numbers go (rank 0 only): ``metrics.jsonl`` (one JSON object per step, and per
evaluation with ``"eval": true``), wandb (offline by default; online when the recipe says so), TensorBoard
events in ``tb/`` (``logging.tensorboard``), each evaluation's samples in ``samples/step-N.jsonl``
(``logging.samples``; the first rows also as a wandb Table), and rank 0's progress (``logging.progress``):
on a terminal a tqdm bar with ETA, the phase running and the last step's seconds per phase; in a log file
(Slurm's job log, a pipe: no terminal) newline-terminated lines instead, one every ``logging.log_every``
steps and one per evaluation, which `tail -f` and `srun --label` show as they come."""

from __future__ import annotations

import json
import netrc
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from megatron_bond.config import Config, ConfigError
from megatron_bond.jsonl import strict

METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tb"
TABLE_ROWS = 16  # samples per evaluation in the wandb Table (the file has them all)


def _num(value, spec: str) -> str:
    """A metric for a line or the bar: a non-finite one is null in the row (JSON has no NaN) and "nan" here."""
    return "nan" if value is None else format(value, spec)


def step_line(row: dict) -> str:
    phases = " ".join(f"{k[5:]} {_num(row[k], '.2f')}s" for k in ("time/rollout", "time/score", "time/train"))
    return (f"loss {_num(row['loss'], '.3g')}, reward {_num(row['reward/policy'], '.3g')}, kl_anchor "
            f"{_num(row['kl/anchor'], '.3g')} | {phases}")


def eval_line(row: dict) -> str:
    return (f"eval step {row['step']}: quantile/ref {_num(row['quantile/ref'], '.3f')}  kl/ref "
            f"{_num(row['kl/ref'], '.4f')}  reward/policy {_num(row['reward/policy'], '.4f')}")


def _plain(value):
    """JSON-able scalars: tensors become floats, and non-finite floats null (JSON has no NaN)."""
    return strict(value.item() if hasattr(value, "item") else value)


class MetricsLog:
    def __init__(self, cfg: Config, out_dir: Path, rank: int, start_step: int, tokenizer=None):
        self.enabled = rank == 0
        self.wandb = self.bar = self.tb = None
        self.lines = False
        self.out_dir, self.tokenizer, self.samples = out_dir, tokenizer, cfg.logging.samples
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
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("logging.tensorboard needs the tensorboard package: pip install "
                                  "'megatron-bond[tensorboard]'") from None
            # A resumed run appends a new events file; TensorBoard keeps the newest value of a step.
            self.tb = SummaryWriter(str(out_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)
        self.lines = cfg.logging.progress and not sys.stderr.isatty()  # the bar's stream
        self.steps, self.log_every = cfg.train.steps, cfg.logging.log_every
        if cfg.logging.progress and not self.lines:
            from tqdm import tqdm

            self.bar_name = cfg.run.name
            self.bar = tqdm(total=cfg.train.steps, initial=start_step, desc=cfg.run.name, unit="step",
                            dynamic_ncols=True)

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint: drop the rows a crash left beyond it. A
        start from step 0 (a crash before the first checkpoint) rewrites every row, step 0's evaluation too."""
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step] if step > 0 else []
        if len(kept) != len(rows):
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in row.items()}
        self.file.write(json.dumps(row) + "\n")
        prefix = "eval/" if row.get("eval") else ""
        scalars = {prefix + k: v for k, v in row.items() if k not in ("step", "eval") and isinstance(v, (int, float))}
        if self.wandb is not None:
            self.wandb.log({prefix + k: v for k, v in row.items() if k not in ("step", "eval")}, step=row["step"])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.bar is not None:
            if row.get("eval"):
                self.bar.write(eval_line(row))
            else:
                self.bar.update(row["step"] - self.bar.n)
                self.bar.set_postfix_str(step_line(row), refresh=False)
        elif self.lines:
            if row.get("eval"):
                print(eval_line(row), flush=True)
            elif row["step"] % self.log_every == 0 or row["step"] == self.steps:
                print(f"step {row['step']}/{self.steps}: {step_line(row)}", flush=True)

    def show_phase(self, phase: str) -> None:
        """The bar's label names the phase that is running (PhaseClock calls it at each phase's start)."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.bar_name} [{phase}]")

    def log_evaluation(self, row: dict, samples: list[dict]) -> None:
        self.log(row)
        self.log_samples(row["step"], samples)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        """``samples/step-N.jsonl``: each held-out prompt's policy sample, its reward and reference quantile
        (and text with a tokenizer), written whole then renamed; the first rows as a wandb Table."""
        if not self.enabled or not self.samples:
            return
        rows = []
        for s in samples:
            row = dict(s)
            if self.tokenizer is not None:
                row["prompt_text"], row["response_text"] = self.tokenizer.decode(s["prompt"]), self.tokenizer.decode(s["response"])
            rows.append(row)
        folder = self.out_dir / SAMPLES_DIR
        folder.mkdir(exist_ok=True)
        tmp = folder / f".step-{step}.jsonl.tmp"
        tmp.write_text("".join(json.dumps({k: _plain(v) for k, v in r.items()}) + "\n" for r in rows))
        tmp.replace(folder / f"step-{step}.jsonl")
        if self.wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            table = [[json.dumps(r[c]) if isinstance(r[c], list) else r[c] for c in columns] for r in rows[:TABLE_ROWS]]
            self.wandb.log({"eval/samples": wandb.Table(columns=columns, data=table)}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
        self.file.close()


def check_wandb_online(cfg: Config, timeout_s: float = 5.0) -> None:
    """logging.wandb_mode=online needs a login and the wandb server: say so in one line before any model
    loads (wandb itself ends in a traceback, after a 98 s wait without a network)."""
    if cfg.logging.wandb_mode != "online":
        return
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    fixes = "use logging.wandb_mode=offline (then `wandb sync RUN_DIR/wandb/offline-run-*`) or disabled"
    try:
        login = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or unreadable
        login = None
    if not os.environ.get("WANDB_API_KEY") and login is None:
        raise ConfigError(f"logging.wandb_mode=online: no wandb login for {host} (WANDB_API_KEY unset, no ~/.netrc "
                          f"entry): set WANDB_API_KEY, run `wandb login`, or {fixes}")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"logging.wandb_mode=online: cannot reach {host}:{port} ({err.strerror or err}): {fixes}") from None


def _run_id(out_dir: Path) -> str:
    """One wandb run per output directory, kept across resumes."""
    path = out_dir / "wandb_run_id"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
