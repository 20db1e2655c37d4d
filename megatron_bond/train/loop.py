"""`megatron-bond train`: build everything from the config, run the steps, evaluate, save."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from megatron.core import parallel_state as ps

from megatron_bond.config import Config, ConfigError
from megatron_bond.errors import RunError
from megatron_bond.runtime import destroy_distributed, init_distributed
from megatron_bond.train.evaluate import evaluate
from megatron_bond.train.hf_export import EXPORTS, HfExports
from megatron_bond.train.metrics import METRICS_FILE, MetricsLog, check_wandb_online
from megatron_bond.resolve import resolve_config
from megatron_bond.train.setup import Trainer, build_trainer
from megatron_bond.train.state import (
    CHECKPOINTS,
    check_resumable,
    latest_checkpoint,
    CheckpointWriter,
    load_checkpoint,
)
from megatron_bond.train.signals import StopSignal
from megatron_bond.train.step import train_step

POLICY_DIR = "policy"  # the final policy: a model checkpoint that score, generate and the exporter read
PREEMPTED = "PREEMPTED"  # written when a signal stopped the run early (slurm/jbond_gemma.sh requeues on it)


def prepare_output_dir(path: Path) -> bool:
    """Create the output directory and prove it writable before any process group or model exists.
    Returns whether this call created it."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run.output_dir {path} is not writable ({err.strerror}): choose another directory") from None
    return created


def lock_output_dir(path: Path) -> int | None:
    """Rank 0 holds an exclusive lock on the output directory for the whole run (released when the process
    ends, however it ends), so a second `train` on it is refused instead of interleaving metrics.jsonl and
    checkpoints. Returns the locked descriptor (None on other ranks). flock on the directory itself: no
    file is left behind."""
    if not _first_rank():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"run.output_dir {path} is in use by another `megatron-bond train` (it holds the directory's "
                          "lock): wait for it to end, or choose another run.output_dir") from None
    return fd


def _first_rank() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def _announce(t: Trainer, resume_from: Path | None, start: int) -> None:
    cfg, d = t.cfg, t.dist
    if d.rank != 0:
        return
    print(f"resolved config: {json.dumps(cfg.to_dict())}", flush=True)  # as saved in config.yaml
    if resume_from is not None:
        print(f"resuming from {resume_from} at step {start}", flush=True)
    algo = t.algorithm.describe()
    print(f"megatron-bond train: world {d.world_size} = tp {d.tp} × pp {d.pp} × dp {d.dp} ({d.backend}), "
          f"{cfg.model.family} {cfg.model.num_layers} layers, {cfg.model.params_dtype}; {algo}; "
          f"{len(t.prompts.train)} training / {len(t.prompts.eval)} held-out prompts "
          f"({t.prompts.dropped} longer than the limit, {t.prompts.empty} empty dropped); {cfg.train.steps} steps of "
          f"{cfg.train.global_batch_size} prompts -> {cfg.run.output_dir}", flush=True)


def save_policy(t: Trainer, out_dir: Path) -> Path:
    """The trained policy as a model checkpoint (with the source checkpoint's hf/ files beside it)."""
    from megatron_bond.models.checkpoint import save_model_checkpoint

    target = out_dir / POLICY_DIR
    if t.dist.rank == 0 and target.exists():
        shutil.rmtree(target)
    torch.distributed.barrier()
    save_model_checkpoint([c.module for c in t.policy], t.cfg, target)
    if t.dist.rank == 0 and t.cfg.policy.ckpt and (Path(t.cfg.policy.ckpt) / "hf").is_dir():
        shutil.copytree(Path(t.cfg.policy.ckpt) / "hf", target / "hf")
    torch.distributed.barrier()
    return target


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train(cfg: Config) -> Path:
    """Train from the start, or resume from ``latest`` in run.output_dir. Returns the output directory.
    On SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) every rank saves a checkpoint and the run returns early (exit 0:
    Slurm requeues and the next start resumes); ``PREEMPTED`` in the output directory says so."""
    cfg = resolve_config(cfg)
    check_wandb_online(cfg)
    out_dir = Path(cfg.run.output_dir)
    created = prepare_output_dir(out_dir)
    try:
        lock = lock_output_dir(out_dir)
        try:
            return _train(cfg, out_dir)
        finally:
            if lock is not None:
                os.close(lock)
    except BaseException:
        # Bad input found before a fresh run's first metrics row leaves nothing behind; a run with rows
        # keeps everything (its metrics say what happened; checkpoints are for the resume).
        metrics = out_dir / METRICS_FILE
        started = (out_dir / CHECKPOINTS).exists() or (metrics.exists() and metrics.stat().st_size > 0)
        if created and _first_rank() and not started:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _train(cfg: Config, out_dir: Path) -> Path:
    resume_from = latest_checkpoint(out_dir)
    if resume_from is not None:
        check_resumable(resume_from, cfg)  # before any process group or model
        done = json.loads((resume_from / "trainer.json").read_text())["step"]
        if done >= cfg.train.steps and (out_dir / POLICY_DIR).is_dir():
            if _first_rank():
                print(f"{out_dir} is complete: step {done} of train.steps={cfg.train.steps}, policy checkpoint "
                      f"{out_dir / POLICY_DIR}; to train further, raise train.steps (run.allow_changed=[train.steps] "
                      "with a decaying schedule)", flush=True)
            return out_dir
    stop = StopSignal()
    dist = init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        t = build_trainer(cfg, dist)
        with t.clock.phase("checkpoint_load"):
            start = load_checkpoint(t, resume_from) if resume_from else 0
        _announce(t, resume_from, start)
        if dist.rank == 0:
            (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (out_dir / PREEMPTED).unlink(missing_ok=True)
        metrics = MetricsLog(cfg, out_dir, dist.rank, start_step=start, tokenizer=t.tokenizer)
        t.clock.listener = metrics.show_phase
        exports = HfExports(cfg, out_dir, dist.rank) if cfg.checkpoint.export_hf else None
        if exports is not None and start > 0 and exports.missing(start):  # killed while exporting it
            exports.start(t, start)
        last = cfg.train.steps
        checkpoints = CheckpointWriter(cfg, dist, ps.get_data_parallel_group(), out_dir)
        try:
            if start == 0:
                metrics.log_evaluation(*evaluate(t, 0))
            for step in range(start + 1, last + 1):
                metrics.log(train_step(t, step))
                if t.skips.exhausted:  # every rank agreed on each skip: all stop here, no checkpoint
                    raise RunError(f"step {step}: {t.skips.consecutive} updates in a row had a non-finite gradient "
                                   f"(train.max_skipped_steps={cfg.train.max_skipped_steps}); stopped without a "
                                   f"checkpoint: see {out_dir / METRICS_FILE}, lower optimizer.lr or check the reward")
                if _due(step, cfg.train.eval_every, last):
                    metrics.log_evaluation(*evaluate(t, step))
                checkpoints.poll()
                preempted = stop.agreed()
                if preempted or _due(step, cfg.checkpoint.every, last):
                    with t.clock.phase("checkpoint_save"):
                        ckpt = checkpoints.save(t, step)
                    if exports is not None and not preempted:  # a preempted job has seconds, not minutes
                        exports.start(t, step)
                if exports is not None:
                    exports.poll()
                if preempted:
                    checkpoints.wait()
                    if exports is not None:
                        exports.wait()
                    if dist.rank == 0:
                        (out_dir / PREEMPTED).write_text(f"{step}\n")
                        print(f"stopping on a signal: checkpoint {ckpt} at step {step}; starting the same "
                              "command again resumes from it", flush=True)
                    return out_dir
            policy = save_policy(t, out_dir)
            checkpoints.wait()
            if exports is not None:
                exports.wait()
        except BaseException:
            checkpoints.abort()
            raise
        finally:
            metrics.close()
        if dist.rank == 0:
            exported = f", Hugging Face exports {out_dir / EXPORTS}" if exports is not None else ""
            print(f"done: metrics {out_dir / METRICS_FILE}, policy checkpoint {policy}{exported}"
                  f"{exports.summary() if exports is not None else ''}", flush=True)
        return out_dir
    finally:
        stop.restore()
        destroy_distributed()
