"""Training checkpoints: everything a step depends on, written atomically, resumed automatically.

    OUT/checkpoints/step_0000100/
        dist/                 megatron-core dist_checkpointing: policy weights ("policy." keys; under LoRA its
                              adapters only, the base being policy.ckpt's), the anchor's
                              fp32 EMA shadow ("anchor." keys), the optimizer state in model space (reshards
                              across TP / PP / DP; the distributed optimizer's across DP only)
        rng/pp{p}_tp{t}_dp{d}.pt   each rank's Python, numpy, torch (CPU, CUDA) and Megatron tracker RNG state
        trainer.json          step, LR scheduler, data position (epoch, index, shuffle seed), skipped updates, layout,
                              the optimizer state's sharding
        config.json           the resolved config the run trained with
    OUT/checkpoints/latest    the name of the newest complete checkpoint, written last

Atomicity: every rank writes into ``.step_N.partial``; after a barrier (all ranks done) rank 0 renames it
to ``step_N`` and then replaces ``latest`` (write a temporary file, os.replace): a crash at any moment
leaves ``latest`` naming a complete checkpoint. Older checkpoints beyond ``checkpoint.keep_last`` are
removed only after ``latest`` moved. Partial directories of a crash are removed at the next save.

The sampler needs no state here: its seeds derive from (run seed, step, prompt index) (train/samples.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

from megatron_bond.config import Config, ConfigError
from megatron_bond.errors import RunError
from megatron_bond.models.checkpoint import check_complete, refuse_non_finite
from megatron_bond.models.gpt import unwrap
from megatron_bond.models.keys import canonical, load_module_state
from megatron_bond.models.lora import is_adapter
from megatron_bond.resolve import uses_distributed_optimizer
from megatron_bond.runtime.megatron_compat import prime_adam_state
from megatron_bond.train.faults import fault_point
from megatron_bond.train.resume import resume_changes, run_inputs
from megatron_bond.train.signals import StopSignal

CHECKPOINTS = "checkpoints"
LATEST = "latest"
# The distributed optimizer's state in megatron-core's fully parallel format (Megatron-LM's default):
# each rank writes its own shards and nothing is gathered, so it reshards over data-parallel ranks only
# (check_resumable says so before anything loads). Its default, fully_sharded_model_space, is refused
# by megatron-core 0.16's own checkpointing (flattened ranges; seen on an H200).
DIST_OPT_SHARDING = "dp_reshardable"
def _policy_state(t) -> dict:
    # Under LoRA the adapters only: the base is policy.ckpt's (its fingerprint in trainer.json), never rewritten.
    lora = t.cfg.model.lora.enabled
    return {f"chunk{i}": {k: v for k, v in canonical(unwrap(c).sharded_state_dict(prefix="policy.")).items()
                          if not lora or is_adapter(k)} for i, c in enumerate(t.policy)}


def _anchor_state(t, fulls: list) -> dict:
    """The anchor model's sharded state dict with each parameter's data replaced by its whole fp32
    shadow (``Anchor.full_shadows()``), so the EMA state is saved in fp32 under "anchor." keys and
    reshards like the policy."""
    shadows = {p.data_ptr(): s for p, s in fulls}
    out = {}
    for i, chunk in enumerate(t.anchor.chunks):
        for key, value in canonical(chunk.sharded_state_dict(prefix="anchor.")).items():
            if isinstance(value, (ShardedTensor, ShardedTensorFactory)) and value.data.data_ptr() in shadows:
                full = shadows[value.data.data_ptr()]
                extra = {"dtype": full.dtype} if isinstance(value, ShardedTensor) else {}
                out[f"chunk{i}.{key}"] = dataclasses.replace(value, data=full, **extra)
    return out


def _state(t, is_loading: bool, fulls: list) -> dict:
    policy = _policy_state(t)
    metadata = {"distrib_optim_sharding_type": DIST_OPT_SHARDING} if _optimizer_sharding(t.cfg) else None
    return {"policy": policy, "anchor": _anchor_state(t, fulls),
            "optimizer": t.optimizer.sharded_state_dict(policy, is_loading=is_loading, metadata=metadata)}


def _optimizer_sharding(cfg: Config) -> str | None:
    return DIST_OPT_SHARDING if uses_distributed_optimizer(cfg) else None


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_file(dist) -> str:
    return _rng_name(dist.pp_rank, dist.tp_rank, dist.dp_rank)


def _rng_name(pp_rank: int, tp_rank: int, dp_rank: int) -> str:
    return f"pp{pp_rank}_tp{tp_rank}_dp{dp_rank}.pt"


class CheckpointWriter:
    """Writes training checkpoints (collective: every rank calls each method at the same step).

    Fully parallel: megatron-core's FullyParallelSaveStrategyWrapper spreads the tensors every data-parallel
    rank holds (weights, anchor, an unsharded optimizer's state) over the DP group, so each rank writes and
    stages 1/DP of them instead of DP rank 0 writing all. checkpoint.async_save: the shard files are written
    by a process forked once this rank's tensors are staged (on a GPU copied to the host; on a CPU the
    fork's copy-on-write pages are the snapshot), megatron-core's AsyncCallsQueue, while training goes on;
    the small files (RNG, trainer.json, config.json) are written at once. Completion (rename, ``latest``,
    pruning) runs only when every rank's writer has finished, at a later ``poll`` (each step) or ``wait``
    (the next save, preemption, the end): until then ``latest`` names the previous checkpoint, and a kill
    leaves that one intact. One save is in flight at a time."""

    def __init__(self, cfg: Config, dist, dp_group, out_dir: Path):
        self.cfg, self.dist, self.dp_group, self.root = cfg, dist, dp_group, Path(out_dir) / CHECKPOINTS
        self.queue = AsyncCallsQueue() if cfg.checkpoint.async_save else None
        self.pending: int | None = None  # the step whose save is in flight

    def save(self, t, step: int) -> Path:
        """Starts (async) or writes (sync) the checkpoint of ``step``; returns its final directory."""
        self.wait()  # the previous save completes first: its partial directory must not be taken for stale
        name = f"step_{step:07d}"
        tmp, final = self.root / f".{name}.partial", self.root / name
        with disk_full_in_one_line(self.root, step, self.dist.rank):
            if self.dist.rank == 0:
                for stale in self.root.glob(".*.partial"):
                    shutil.rmtree(stale)
                (tmp / "rng").mkdir(parents=True)
                (tmp / "dist").mkdir()
            torch.distributed.barrier()
            strategy = FullyParallelSaveStrategyWrapper(TorchDistSaveShardedStrategy("torch_dist", 1), self.dp_group)
            with StopSignal.deferred():  # the writer processes this starts must not die of Slurm's signals
                request = dist_checkpointing.save(_state(t, False, t.anchor.full_shadows()), str(tmp / "dist"),
                                                  sharded_strategy=strategy, async_sharded_save=self.queue is not None)
                torch.save(_rng_state(), tmp / "rng" / _rng_file(t.dist))
                if self.dist.rank == 0:
                    self._write_trainer(t, step, tmp)
                if request is None:
                    self._complete(step, tmp, final)
                    return final
                request.add_finalize_fn(functools.partial(self._complete, step, tmp, final))
                self.queue.schedule_async_request(request)
        self.pending = step
        fault_point(step, "async_writing")
        return final

    def _write_trainer(self, t, step: int, tmp: Path) -> None:
        trainer = {"step": step, "scheduler": t.scheduler.state_dict(), "order": t.order.state_dict(),
                   "inputs": run_inputs(t.cfg), "skipped_updates": t.skips.state_dict(),
                   "layout": {"tp": t.dist.tp, "pp": t.dist.pp, "dp": t.dist.dp},
                   "optimizer_sharding": _optimizer_sharding(t.cfg)}
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))
        (tmp / "config.json").write_text(json.dumps(t.cfg.to_dict(), indent=2))

    def _complete(self, step: int, tmp: Path, final: Path) -> None:
        """Every rank's files are written: rank 0 renames, moves ``latest`` and prunes."""
        fault_point(step, "after_tensors")
        torch.distributed.barrier()  # every rank's files are complete
        root = self.root
        if self.dist.rank == 0:
            fault_point(step, "before_rename")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            fault_point(step, "before_latest")
            pointer = root / f".{LATEST}.tmp"
            pointer.write_text(final.name)
            os.replace(pointer, root / LATEST)
            fault_point(step, "after_latest")
            kept = sorted(p for p in root.iterdir() if p.name.startswith("step_"))
            for old in kept[: -self.cfg.checkpoint.keep_last]:
                shutil.rmtree(old)
        torch.distributed.barrier()

    def poll(self) -> None:
        """Completes the save in flight if every rank's writer has finished (one all-reduce)."""
        self._finalize(blocking=False)

    def wait(self) -> None:
        """Blocks until the save in flight is complete and ``latest`` names it."""
        self._finalize(blocking=True)

    def _finalize(self, blocking: bool) -> None:
        if self.pending is None:
            return
        with disk_full_in_one_line(self.root, self.pending, self.dist.rank):
            if self.queue.maybe_finalize_async_calls(blocking=blocking):
                self.pending = None

    def abort(self) -> None:
        """A failed run: the writer in flight is killed; its partial directory stays behind, ``latest`` unmoved."""
        if self.queue is not None:
            for call in self.queue.async_calls:  # AsyncCallsQueue.close(abort=True) kills persistent workers only
                call.async_caller.close(abort=True)
            self.queue.async_calls.clear()
            self.pending = None


def _no_space(err: BaseException) -> bool:
    """A full disk, however the save reports it: an OSError, or torch's CheckpointException carrying each
    rank's failure."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in f"{err} {getattr(err, 'failures', '')!r}":
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def disk_full_in_one_line(root: Path, step: int, rank: int):
    """A save that fills the disk: its partial directory removed, one line (``latest`` still names the
    previous complete checkpoint: the rename and the pointer come only after every rank's files are written)."""
    try:
        yield
    except Exception as err:
        if not _no_space(err):
            raise
        if rank == 0:
            shutil.rmtree(root / f".step_{step:07d}.partial", ignore_errors=True)
        pointer = root / LATEST
        previous = pointer.read_text().strip() if pointer.is_file() else "none yet"
        raise RunError(f"step {step}: no space left on device while saving a checkpoint under {root}; latest still "
                       f"names {previous}: free space (or lower checkpoint.keep_last) and start the same command "
                       "again") from None


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None for a fresh run; a pointer to a missing directory is
    an error (something deleted it), not a silent restart."""
    pointer = Path(out_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    ckpt = pointer.parent / pointer.read_text().strip()
    if not (ckpt / "trainer.json").is_file() or not (ckpt / "config.json").is_file():
        raise ConfigError(f"{pointer} names {ckpt.name}, which is missing or incomplete: restore it, or point "
                          "latest at an older step_* directory")
    check_complete(ckpt / "dist")
    layout = json.loads((ckpt / "trainer.json").read_text())["layout"]
    for p, t, d in itertools.product(range(layout["pp"]), range(layout["tp"]), range(layout["dp"])):
        if not (ckpt / "rng" / _rng_name(p, t, d)).is_file():  # every rank's stream, checked before any rank starts
            raise ConfigError(f"{ckpt / 'rng' / _rng_name(p, t, d)} is missing: the checkpoint is incomplete")
    return ckpt


def check_resumable(ckpt: Path, cfg: Config) -> list[str]:
    """What may change on resume (train/resume.py), and whether the optimizer state fits the layout.
    Returns the changes run.allow_changed accepted."""
    saved = Config.from_dict(json.loads((ckpt / "config.json").read_text()))
    accepted = resume_changes(ckpt, cfg)
    sharding = json.loads((ckpt / "trainer.json").read_text()).get("optimizer_sharding")
    if sharding != _optimizer_sharding(cfg):
        raise ConfigError(f"cannot resume from {ckpt}: its optimizer state was saved "
                          f"{'by the distributed optimizer' if sharding else 'unsharded'}; set optimizer.distributed="
                          f"{'true' if sharding else 'false'} to resume it")
    model_parallel = ("tp", "pp", "vpp", "first_stage_layers", "last_stage_layers")
    if sharding and any(getattr(saved.parallel, k) != getattr(cfg.parallel, k) for k in model_parallel):
        was = ", ".join(f"parallel.{k}={getattr(saved.parallel, k)}" for k in model_parallel)
        raise ConfigError(f"cannot resume from {ckpt} at another tensor/pipeline layout: the distributed "
                          f"optimizer's state ({sharding}) reshards over data-parallel ranks only; resume at {was}")
    return accepted


def _apply_optimizer_settings(t) -> None:
    """Accepted optimizer changes take effect: the loaded state carries the saved settings in its param
    groups (megatron-core's scheduler reads each group's max_lr / min_lr before its own)."""
    o = t.cfg.optimizer
    for group in t.optimizer.param_groups:
        group.update(betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)
        group.update({k: v for k, v in (("max_lr", o.lr), ("min_lr", o.min_lr)) if k in group})


def load_checkpoint(t, ckpt: Path) -> int:
    """Collective: restore every piece of state into the built trainer; returns the step it was at."""
    accepted = check_resumable(ckpt, t.cfg)
    trainer = json.loads((ckpt / "trainer.json").read_text())
    fulls = t.anchor.full_shadows()
    prime_adam_state(t.optimizer)
    template = _state(t, True, fulls)
    anchor_keys = {value.data.data_ptr(): key for key, value in template["anchor"].items()}
    state = dist_checkpointing.load(template, str(ckpt / "dist"))
    refuse_non_finite(state, str(ckpt), torch.distributed.group.WORLD)
    for i, chunk in enumerate(t.policy):
        prefix = "policy."
        module = unwrap(chunk)
        loaded = {k[len(prefix):]: v for k, v in state["policy"][f"chunk{i}"].items()}
        if t.cfg.model.lora.enabled:  # the checkpoint holds the adapters; the base is policy.ckpt's, already loaded
            loaded = {**{k: v for k, v in module.state_dict().items() if not is_adapter(k)}, **loaded}
        load_module_state(module, loaded)
    t.optimizer.load_state_dict(state["optimizer"])
    if any(change.startswith("optimizer.") for change in accepted):
        _apply_optimizer_settings(t)
    t.anchor.load_full_shadows([(p, state["anchor"][anchor_keys[s.data_ptr()]]) for p, s in fulls])
    if any(change.startswith(("optimizer.", "train.steps")) for change in accepted):  # the recipe's schedule
        t.scheduler.override_opt_param_scheduler, t.scheduler.use_checkpoint_opt_param_scheduler = True, False
    t.scheduler.load_state_dict(trainer["scheduler"])
    if accepted and t.dist.rank == 0:
        print(f"resuming with changes accepted by run.allow_changed: {'; '.join(accepted)}", flush=True)
    t.order.load_state_dict(trainer["order"])
    # Checkpoints written before updates could be skipped had none (a count, never in the numbers).
    t.skips.load_state_dict(trainer.get("skipped_updates", {"total": 0, "consecutive": 0}))
    rng = ckpt / "rng" / _rng_file(t.dist)
    if trainer["layout"] == {"tp": t.dist.tp, "pp": t.dist.pp, "dp": t.dist.dp}:  # files checked by latest_checkpoint
        _set_rng_state(torch.load(rng, weights_only=False))
    elif t.dist.rank == 0:
        print(f"resuming at another layout than saved ({trainer['layout']}): RNG streams start from run.seed "
              "(rollout seeds derive from the step and do not change)", flush=True)
    return trainer["step"]
