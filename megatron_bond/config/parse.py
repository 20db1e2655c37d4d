"""Typed parsing of a recipe: nested dicts (YAML, overrides, a checkpoint's config.json) into the section
dataclasses, each value checked against its annotation; ``key=value`` overrides; the YAML reader."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from megatron_bond.config.errors import ConfigError


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in typing.get_args(hint)):
            raise ConfigError(f"config: {key}: YAML reads on/off/yes/no/true/false as a boolean ({value}): write one "
                              f"of {list(typing.get_args(hint))}")
        if value not in typing.get_args(hint):
            raise ConfigError(f"config: {key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config: {key}: expected a list, got {value!r}")
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"config: {key}: expected {hint.__name__}, got {value!r}")
    return value


def build(cls, data: Any, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"config: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"config: unknown key '{dotted}' (known: {', '.join(names)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build(hint, value, f"{dotted}.")
        else:
            kwargs[key] = _check_type(value, hint, dotted)
    return cls(**kwargs)



def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (values parsed as YAML scalars) and ``~a.b``
    deletions (Hydra's syntax: the key or section goes, and its default applies)."""
    for item in overrides:
        if item.startswith("~"):
            _delete(data, item[1:])
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config: override {item!r} is not of the form key=value (or ~key to delete one)")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config: override {key}: '{part}' is not a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise ConfigError(f"config: override {item!r}: the value is not valid YAML") from None
    return data


def _delete(data: dict[str, Any], key: str) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not key or not isinstance(node, dict) or leaf not in node:
        raise ConfigError(f"config: override ~{key}: the recipe sets no such key to delete")
    del node[leaf]


def replace_recipe_choices(data: dict[str, Any], overrides: list[str], choices: dict[str, tuple[str, ...]]) -> None:
    """Keys of which one is given at most (``choices``: section -> keys; the reward's sources): one set on
    the command line replaces the recipe's, so ``reward.url=...`` works on a recipe that names
    ``reward.ckpt``. Two given on the command line stay, for validation to name."""
    given = {item.partition("=")[0] for item in overrides if not item.startswith("~")}
    for section, keys in choices.items():
        chosen = [k for k in keys if f"{section}.{k}" in given and _get(data, section, k) is not None]
        if chosen and isinstance(data.get(section), dict):
            for k in keys:
                if k not in chosen and data[section].get(k) is not None:
                    data[section][k] = None


def _get(data: dict[str, Any], section: str, key: str) -> Any:
    node = data.get(section)
    return node.get(key) if isinstance(node, dict) else None


def read_recipe(recipe: str | Path | None) -> dict[str, Any]:
    """A recipe YAML as a nested dict ({} for none); syntax errors name file:line."""
    if recipe is None:
        return {}
    path = Path(recipe)
    if path.is_dir():
        raise ConfigError(f"config: recipe {path} is a directory: give a YAML file (e.g. recipes/tiny_cpu.yaml)")
    if not path.is_file():
        raise ConfigError(f"config: recipe {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: recipe {path} is not UTF-8 text (byte {err.start}): give a YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
