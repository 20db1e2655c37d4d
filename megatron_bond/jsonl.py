"""Reading the JSONL inputs of `score` and `generate`: one JSON object a line, errors naming file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from megatron_bond.config import ConfigError


def read_objects(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("path:line", object) for every non-blank line; anything but a JSON object is a ConfigError."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: expected a JSON object")
            yield f"{path}:{n}", row
