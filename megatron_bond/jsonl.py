"""Reading the JSONL inputs of `score` and `generate`: one JSON object a line, errors naming file:line,
and the check that a row's token ids fit the model."""

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


def check_token_ids(tokens, vocab_size: int, where: str) -> None:
    """A non-empty list of integer ids below ``vocab_size``, else a ConfigError naming ``where``."""
    if not isinstance(tokens, list) or not tokens or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in tokens):
        raise ConfigError(f"{where}: tokens must be a non-empty list of ids in [0, {vocab_size})")
