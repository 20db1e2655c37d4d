"""One typed config schema for a run: recipe YAML + ``key=value`` overrides, validated up front.

Every error is a one-line ``ConfigError`` naming the dotted key, raised before any process group starts.
Sections: model.py (parallel, model), algorithm.py (optimizer, bond), run.py (the rest); the rules
between keys in validate.py, the numeric ranges in ranges.py, parsing in parse.py.
"""

from __future__ import annotations

from pathlib import Path

from megatron_bond.config import schema
from megatron_bond.config.errors import ConfigError
from megatron_bond.config.parse import apply_overrides, read_recipe, replace_recipe_choices
from megatron_bond.config.run import REWARD_SOURCES
from megatron_bond.config.schema import *  # noqa: F403  (Config and its section classes)

__all__ = [*schema.__all__, "ConfigError", "apply_overrides", "load_config"]


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a recipe YAML (or the defaults), apply overrides (a reward source given replaces the recipe's;
    ``~key`` deletes one), and validate."""
    overrides = list(overrides or [])
    data = apply_overrides(read_recipe(recipe), overrides)
    replace_recipe_choices(data, overrides, {"reward": REWARD_SOURCES})
    cfg = Config.from_dict(data)
    # With policy.ckpt the architecture is the checkpoint's (resolve.py checks it, resolved, with the rest).
    return cfg.validate(architecture=not cfg.policy.ckpt)
