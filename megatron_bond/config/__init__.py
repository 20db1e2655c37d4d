"""One typed config schema for a run: recipe YAML + ``key=value`` overrides, validated up front.

Every error is a one-line ``ConfigError`` naming the dotted key, raised before any process group starts.
Sections: model.py (parallel, model), algorithm.py (optimizer, bond), run.py (the rest); the rules
between keys in validate.py, the numeric ranges in ranges.py, parsing in parse.py.
"""

from __future__ import annotations

from pathlib import Path

from megatron_bond.config import schema
from megatron_bond.config.errors import ConfigError
from megatron_bond.config.parse import apply_overrides, read_recipe
from megatron_bond.config.schema import *  # noqa: F403  (Config and its section classes)

__all__ = [*schema.__all__, "ConfigError", "apply_overrides", "load_config"]


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a recipe YAML (or the defaults), apply overrides, and validate."""
    data = apply_overrides(read_recipe(recipe), list(overrides or []))
    return Config.from_dict(data).validate()
