"""Streaming access to Hugging Face safetensors checkpoints (one tensor in memory at a time)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_bond.config import ConfigError

TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json",
)
SHARD_BYTES = 5 * 2**30


class SafetensorsReader:
    """Every tensor name of a (possibly sharded) safetensors checkpoint, read lazily."""

    def __init__(self, hf_dir: Path):
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{index}: not a safetensors index (JSON with a weight_map)") from None
        elif (hf_dir / "model.safetensors").is_file():
            weight_map = {k: "model.safetensors" for k in _open(hf_dir / "model.safetensors").keys()}
        else:
            raise ConfigError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
        missing = sorted({f for f in weight_map.values() if not (hf_dir / f).is_file()})
        if missing:
            raise ConfigError(f"{hf_dir}: shard files listed in the index are missing: {', '.join(missing)}")
        self.dir, self.weight_map = hf_dir, weight_map
        self._open: dict[str, object] = {}

    def keys(self) -> set[str]:
        return set(self.weight_map)

    def _file(self, key: str):
        name = self.weight_map[key]
        if name not in self._open:
            self._open[name] = _open(self.dir / name)
        return self._open[name]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file(key).get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._file(key).get_tensor(key)
        except Exception as err:  # safetensors raises its own error types for damaged data
            raise ConfigError(f"{self.dir / self.weight_map[key]}: cannot read {key} ({err})") from None


def _open(path: Path):
    """safe_open with a one-line error for a truncated or damaged file."""
    try:
        return safe_open(path, framework="pt")
    except Exception as err:  # SafetensorError and OSError alike
        raise ConfigError(f"{path}: not a readable safetensors file ({err})") from None


def _as_other_outputs(path: Path) -> None:
    """safetensors creates its files 0600: give them the mode the umask gives every other output (0644
    under the usual 022), so a team's group can read an exported model."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class SafetensorsWriter:
    """Writes tensors into ~5 GiB shards as they come, then the index (as transformers does)."""

    def __init__(self, out_dir: Path):
        self.dir, self.pending, self.size, self.files = out_dir, {}, 0, []
        self.weight_map: dict[str, str] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.pending[name] = tensor.contiguous()
        self.size += tensor.numel() * tensor.element_size()
        if self.size >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            name = f"model-{len(self.files) + 1:05d}.safetensors"
            save_file(self.pending, self.dir / name, metadata={"format": "pt"})
            _as_other_outputs(self.dir / name)
            self.files.append(name)
            self.weight_map.update({k: name for k in self.pending})
            self.pending, self.size = {}, 0

    def close(self) -> None:
        self._flush()
        if len(self.files) == 1:
            (self.dir / self.files[0]).rename(self.dir / "model.safetensors")
            return
        total = sum((self.dir / f).stat().st_size for f in self.files)
        index = {"metadata": {"total_size": total}, "weight_map": self.weight_map}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_side_files(src: Path, dst: Path, include_config: bool = True) -> list[str]:
    """Copy config.json (optionally) and whatever tokenizer files exist."""
    dst.mkdir(parents=True, exist_ok=True)
    names = (("config.json",) if include_config else ()) + TOKENIZER_FILES
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
