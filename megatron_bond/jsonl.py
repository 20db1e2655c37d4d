"""Reading the JSONL inputs of `score` and `generate`: one JSON object a line, errors naming file:line,
and the check that a row's token ids fit the model; strict JSON for what the benchmarks write."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_bond.config import ConfigError


def read_objects(path: str | Path) -> Iterator[tuple[str, dict]]:
    """("path:line", object) for every non-blank line; anything but a JSON object is a ConfigError."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}:{n}: not UTF-8 text (byte {err.start + 1} of the line)") from None
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


def write_jsonl(path: str | Path, rows: Iterable[dict], total: int, desc: str, writer: bool) -> None:
    """Consume ``rows`` (on every rank: they come from collectives); the ``writer`` rank streams them
    into a hidden ``.NAME.partial`` beside ``path`` with a progress bar, renamed to ``path`` only once
    complete, so a failed or interrupted run leaves no truncated output."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial"
    out = open(tmp, "w") if writer else None
    bar = None
    if writer:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)
    try:
        for row in rows:
            if out is not None:
                out.write(json.dumps(row) + "\n")
                bar.update()
    except BaseException:
        if out is not None:
            out.close()
            tmp.unlink(missing_ok=True)
        raise
    if out is not None:
        out.close()
        bar.close()
        os.replace(tmp, path)


def strict(value, digits: int | None = None):
    """``value`` with NaN and infinities as None (JSON has neither), and floats rounded to ``digits``
    decimals when given, through dicts and lists."""
    if isinstance(value, float):
        return (round(value, digits) if digits is not None else value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: strict(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [strict(v, digits) for v in value]
    return value
