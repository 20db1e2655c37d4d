"""Model checkpoints: a Megatron distributed checkpoint that loads at any TP/PP, with the run config
and the Hugging Face config / tokenizer files beside it, so later commands need only the directory.

    CKPT/megatron_bond.json   the Config (its parallel section is the saving layout; loaders override it)
    CKPT/model/               megatron-core dist_checkpointing (resharded on load)
    CKPT/hf/                  config.json and tokenizer files of the source model (for export, tokenizing)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from torch.distributed.checkpoint import CheckpointException

from megatron_bond.config import Config, ConfigError, ParallelConfig
from megatron_bond.models.keys import canonical, load_module_state
from megatron_bond.models.lora import init_adapters, is_adapter

CONFIG_FILE = "megatron_bond.json"


def _sharded(chunks, prefix: str = "", adapters: bool = True) -> dict:
    # One entry per virtual-pipeline chunk: their local module names collide, their global keys do not.
    # ``adapters=False``: the base's tensors only (a converted checkpoint under a LoRA model).
    return {f"chunk{i}": {k: v for k, v in canonical(chunk.sharded_state_dict(prefix=prefix)).items()
                          if adapters or not is_adapter(k)}
            for i, chunk in enumerate(chunks)}


def _training_step(ckpt_dir: str | Path) -> bool:
    """A training checkpoint (RUN_DIR/checkpoints/step_N, train/state.py): its config in config.json, its
    policy under "policy." keys of dist/ (beside the anchor and the optimizer state)."""
    return (Path(ckpt_dir) / "trainer.json").is_file()


def save_model_checkpoint(chunks, cfg: Config, ckpt_dir: str | Path) -> None:
    """Collective over all ranks; rank 0 writes the config."""
    ckpt_dir = Path(ckpt_dir)
    (ckpt_dir / "model").mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(_sharded(chunks), str(ckpt_dir / "model"))
    if torch.distributed.get_rank() == 0:
        (ckpt_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    torch.distributed.barrier()


def read_checkpoint_config(ckpt_dir: str | Path, parallel: ParallelConfig | None = None, check: bool = True) -> Config:
    """The config a checkpoint (or a training checkpoint, for its policy) was saved with (``parallel`` replaced), after checking that its tensors are
    complete (``check=False``: the config alone, for a planner on a machine without the weights)."""
    training = _training_step(ckpt_dir)
    path = Path(ckpt_dir) / ("config.json" if training else CONFIG_FILE)
    if not path.is_file():
        raise ConfigError(f"{ckpt_dir}: not a megatron-bond checkpoint (no {CONFIG_FILE})")
    try:
        cfg = Config.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if parallel is not None:
        cfg = dataclasses.replace(cfg, parallel=parallel)
    cfg = cfg.validate()
    if check:  # here, before any process group exists: a damaged checkpoint is one line from one rank
        check_complete(Path(ckpt_dir) / ("dist" if training else "model"))
    return cfg


def check_complete(dist_dir: str | Path) -> None:
    """A distributed checkpoint directory holds every file its metadata names, each long enough for
    the bytes it should hold (a missing or truncated shard is a one-line error, not a per-rank traceback)."""
    from torch.distributed.checkpoint import FileSystemReader

    dist_dir = Path(dist_dir)
    if not (dist_dir / ".metadata").is_file() or not (dist_dir / "metadata.json").is_file():
        raise ConfigError(f"{dist_dir}: not a complete distributed checkpoint (no .metadata / metadata.json)")
    try:
        storage = FileSystemReader(str(dist_dir)).read_metadata().storage_data
    except Exception as err:  # a corrupt metadata file: any unpickling error
        raise ConfigError(f"{dist_dir}/.metadata is unreadable ({type(err).__name__}): the checkpoint is damaged") from None
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = dist_dir / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing: the checkpoint is incomplete")
        if path.stat().st_size < size:
            raise ConfigError(f"{path} is truncated ({path.stat().st_size} of {size} bytes): the checkpoint is incomplete")


def _named_tensors(state, prefix: str = ""):
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _named_tensors(value, f"{prefix}[{i}]")


def _finite(t: torch.Tensor) -> bool:
    # min and max propagate NaN and expose ±inf, and reduce without a tensor-sized temporary (isfinite(t)
    # would allocate one bool per element, the largest tensor's worth on top of a load's planned peak).
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def first_non_finite(state) -> str | None:
    """The name of the first floating-point tensor in ``state`` (nested dicts / lists) holding a NaN or inf."""
    return next((name for name, t in _named_tensors(state) if t.is_floating_point() and t.numel() and not _finite(t)),
                None)


def refuse_non_finite(state, where: str, group) -> None:
    """After a load: corrupted bytes in a shard load as NaN weights, which would train (or score) silently
    into NaN. Every rank checks its own shards and all agree over ``group`` (one all-reduce), so the ranks
    refuse together instead of leaving the others waiting."""
    bad = first_non_finite(state)
    flag = torch.tensor([0 if bad is None else 1], device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
    if flag.item():
        what = f"{bad} holds" if bad else "another rank's tensors hold"
        raise ConfigError(f"{where}: {what} non-finite values (NaN or inf): the checkpoint is damaged")


def load_model_checkpoint(ckpt_dir: str | Path, cfg: Config) -> list:
    """Build the model at ``cfg.parallel`` (process groups already initialised; every rank loads) and
    load its weights (a training checkpoint's: its policy) (from a checkpoint that read_checkpoint_config has found complete), refusing
    non-finite ones."""
    from megatron_bond.models.gpt import build_model

    chunks = build_model(cfg, initialize=False)
    # Adapters load from a checkpoint that has them (its config says so; resolve.py lets no run train
    # adapters on one), else start fresh: the model is then its base.
    saved = read_checkpoint_config(ckpt_dir, check=False).model.lora.enabled
    prefix, folder = ("policy.", "dist") if _training_step(ckpt_dir) else ("", "model")
    try:
        state = dist_checkpointing.load(_sharded(chunks, prefix, adapters=saved), str(Path(ckpt_dir) / folder))
    except (Exception, CheckpointException) as err:  # noqa: BLE001
        # Bytes damaged inside a shard's serialised items: torch's CheckpointException (a BaseException, so
        # named), raised on every rank together, since DCP gathers the ranks' read errors.
        raise ConfigError(f"{ckpt_dir}/{folder}: a shard is unreadable ({type(err).__name__}): the checkpoint is damaged") from None
    refuse_non_finite(state, str(ckpt_dir), torch.distributed.group.WORLD)
    for i, chunk in enumerate(chunks):
        # A base checkpoint under a LoRA model: the adapters keep the values they are about to get.
        own = {} if saved else {k: v for k, v in chunk.state_dict().items() if is_adapter(k)}
        load_module_state(chunk, {**own, **{k[len(prefix):]: v for k, v in state[f"chunk{i}"].items()}})
    if cfg.model.lora.enabled and not saved:
        init_adapters(chunks, cfg.run.seed)
    return chunks
