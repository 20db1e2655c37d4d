"""checkpoint.export_hf: beside each training checkpoint, the policy as a Hugging Face directory.

    RUN_DIR/hf/step-N/      model.safetensors (the model dtype), config.json, generation_config.json and the
                            tokenizer files of policy.ckpt's hf/
    RUN_DIR/hf/best         "step-N value" of checkpoint.keep_best's metric, when set

How: every rank writes its own shards of the policy into ``RUN_DIR/hf/.step-N.megatron`` (a model
checkpoint, as ``RUN_DIR/policy`` is written: nothing is gathered, no rank holds a full copy on its GPU);
then rank 0 converts it with the exporter of tools/convert_megatron_to_hf.py in a CPU-only child process
while training goes on (the full copy is in that child's host memory, as with the tool). The exporter
writes a hidden ``.step-N.partial-*`` directory and renames it at the end: a kill at any moment leaves the
previous exports as they were. Exports beyond ``checkpoint.keep_last`` are removed after a newer one is
complete, except the best by ``checkpoint.keep_best``. A failed export is one warning line with its log
(``RUN_DIR/hf/.step-N.log``): the run goes on, and its last line counts the failures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from megatron_bond.config import Config
from megatron_bond.train.faults import fault_point

EXPORTS = "hf"
# What a child process must not inherit: the rank's place in the training job (torchrun and Slurm) and its GPU.
_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT")
_CONVERT = ("import sys; from megatron_bond.convert.convert import megatron_to_hf; "
            "from megatron_bond.convert.tool import run_tool; sys.exit(run_tool('export', '--ckpt-dir', megatron_to_hf))")


def export_name(step: int) -> str:
    return f"step-{step}"


def _step(path: Path) -> int:
    return int(path.name.removeprefix("step-"))


class HfExports:
    def __init__(self, cfg: Config, out_dir: Path, rank: int):
        self.cfg, self.rank = cfg, rank
        self.root = out_dir / EXPORTS
        self.running: tuple[int, subprocess.Popen] | None = None
        self.failed: list[int] = []
        if rank == 0:  # what a killed run left: staged copies and partial exports, never a complete export
            for stale in self.root.glob(".step-*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink()

    def start(self, t, step: int) -> None:
        """Collective: the policy's shards to disk, then (rank 0) the conversion in a child process."""
        from megatron_bond.models.checkpoint import save_model_checkpoint

        self.wait()  # one export at a time: the previous one finishes first
        staged = self.root / f".{export_name(step)}.megatron"
        if self.rank == 0:
            self.root.mkdir(exist_ok=True)
        torch.distributed.barrier()
        save_model_checkpoint([c.module for c in t.policy], self.cfg, staged)
        if self.rank == 0:
            shutil.copytree(Path(self.cfg.policy.ckpt) / "hf", staged / "hf")
            log = open(self.root / f".{export_name(step)}.log", "w")
            env = {k: v for k, v in os.environ.items() if k not in _JOB_VARIABLES and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
            env["CUDA_VISIBLE_DEVICES"] = ""  # the GPU is the trainer's
            proc = subprocess.Popen([sys.executable, "-c", _CONVERT, "--ckpt-dir", str(staged),
                                     "--out-dir", str(self.root / export_name(step))],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=False)
            log.close()
            self.running = (step, proc)
            fault_point(step, "export_started")
        torch.distributed.barrier()

    def missing(self, step: int) -> bool:
        """Whether the export of ``step`` (a resumed run's checkpoint) is not complete: a kill during it."""
        return not (self.root / export_name(step)).is_dir()

    def poll(self) -> None:
        """Rank 0: if the running export has ended, settle it (retention, or a warning)."""
        if self.running is not None and self.running[1].poll() is not None:
            self._settle()

    def wait(self) -> None:
        if self.running is not None:
            self.running[1].wait()
            self._settle()

    def _settle(self) -> None:
        step, proc = self.running
        self.running = None
        name = export_name(step)
        shutil.rmtree(self.root / f".{name}.megatron", ignore_errors=True)
        log = self.root / f".{name}.log"
        if proc.returncode != 0:
            self.failed.append(step)
            lines = log.read_text(errors="replace").strip().splitlines()
            print(f"warning: the Hugging Face export of step {step} failed ({lines[-1] if lines else 'no output'}); "
                  f"log: {log}", flush=True)
            return
        log.unlink(missing_ok=True)
        self._retain()

    def _retain(self) -> None:
        """Keep the last ``keep_last`` complete exports and the best one by ``keep_best``."""
        done = sorted((p for p in self.root.glob("step-*") if p.is_dir()), key=_step)
        keep = {p.name for p in done[-self.cfg.checkpoint.keep_last :]}
        best = self._best({_step(p) for p in done})
        if best is not None:
            keep.add(export_name(best[0]))
            (self.root / "best.tmp").write_text(f"{export_name(best[0])} {best[1]}\n")
            (self.root / "best.tmp").replace(self.root / "best")
        for p in done:
            if p.name not in keep:
                shutil.rmtree(p)

    def _best(self, steps: set[int]) -> tuple[int, float] | None:
        """(step, value) of the best evaluation among the exported steps (metrics.jsonl's eval rows)."""
        from megatron_bond.train.metrics import METRICS_FILE

        metric, mode = self.cfg.checkpoint.keep_best, self.cfg.checkpoint.keep_best_mode
        path = self.root.parent / METRICS_FILE
        if metric is None or not path.exists():
            return None
        values = [(r["step"], r[metric]) for r in map(json.loads, path.read_text().splitlines())
                  if r.get("eval") and r["step"] in steps and r.get(metric) is not None]
        if not values:
            return None
        pick = max if mode == "max" else min
        return pick(values, key=lambda sv: sv[1])

    def summary(self) -> str:
        if not self.failed:
            return ""
        return f"; {len(self.failed)} Hugging Face export(s) failed (steps {', '.join(map(str, self.failed))})"
