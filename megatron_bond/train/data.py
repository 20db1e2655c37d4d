"""Prompts: read from local files with HF datasets (or generated for the tiny run), tokenized, filtered by
length, split into training and held-out prompts; and the resumable order training visits them in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_bond.config import Config, ConfigError
from megatron_bond.jsonl import check_token_ids
from megatron_bond.models.tokenizer import TINY_BOS, TextSide

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Prompts:
    train: list[list[int]]
    eval: list[list[int]]
    dropped: int  # prompts longer than the limit, left out
    empty: int = 0  # prompts with no text (BOS alone would train), left out


def _dataset(path: str):
    """Rows of a jsonl / json / parquet file or a dataset saved with save_to_disk, offline."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()  # a bar per split for files of prompts says nothing
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data: {path} does not exist")
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as err:
            raise ConfigError(f"data: {path} is not a saved dataset directory ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    builder = _BUILDERS.get(p.suffix)
    if builder is None:
        raise ConfigError(f"data: {path}: expected .jsonl, .json, .parquet or a saved dataset directory")
    if p.stat().st_size == 0:
        raise ConfigError(f"data: {path} is empty: it holds no prompts")
    try:
        return datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as err:  # datasets wraps parse errors in several types
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"data: {path} could not be read ({detail})") from None


def _tokenize(ds, cfg: Config, text: TextSide, path: str) -> tuple[list[list[int]], int]:
    """Token ids of each row (``tokens``, a conversation in ``messages``, or ``text``), and how many rows
    had no text (left out: a prompt of BOS alone says nothing)."""
    d = cfg.data
    if d.tokens_field in ds.column_names:
        rows = ds[d.tokens_field]
        for i, row in enumerate(rows):
            check_token_ids(row, cfg.model.vocab_size, f"{path}: row {i} field {d.tokens_field!r}")
        return [list(r) for r in rows], 0
    if d.messages_field in ds.column_names:  # conversational rows: always in the chat format
        where = f"data: {path}: field {d.messages_field!r}"
        texts = []
        for i, messages in enumerate(ds[d.messages_field]):
            rendered = text.render_chat(messages, f"{where} row {i}")  # checks the rows' shape too
            texts.append(rendered if any(m["content"].strip() for m in messages) else "")
    elif d.text_field in ds.column_names:
        raw = ds[d.text_field]
        bad = next((i for i, t in enumerate(raw) if not isinstance(t, str)), None)
        if bad is not None:
            raise ConfigError(f"data: {path}: row {bad} field {d.text_field!r} is not a string: {raw[bad]!r}")
        texts = [text.render_chat([{"role": "user", "content": t}], f"data: {path}") if d.chat_template and t.strip()
                 else t for t in raw]
    else:
        raise ConfigError(f"data: {path} has no {d.tokens_field!r}, {d.messages_field!r} or {d.text_field!r} field "
                          f"(columns: {', '.join(ds.column_names)}): set data.text_field, data.messages_field or "
                          "data.tokens_field")
    kept = [t for t in texts if t.strip()]
    return text.encode(kept, f"data: {path}"), len(texts) - len(kept)


def _keep(prompts: list[list[int]], limit: int) -> tuple[list[list[int]], int]:
    kept = [p for p in prompts if 0 < len(p) <= limit]
    return kept, len(prompts) - len(kept)


def prompt_limit(cfg: Config) -> int:
    """The longest prompt that still leaves room for a full response in the model's context."""
    return min(cfg.data.max_prompt_tokens, cfg.model.max_seq_length - cfg.rollout.max_new_tokens)


def load_prompts(cfg: Config, text: TextSide) -> Prompts:
    d = cfg.data
    limit = prompt_limit(cfg)
    if limit < 1:
        raise ConfigError(f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens}) leaves no room for a prompt "
                          f"in model.max_seq_length ({cfg.model.max_seq_length})")
    if d.path is None:
        return _tiny_prompts(cfg, limit)
    tokens, empty = _tokenize(_dataset(d.path), cfg, text, d.path)
    rows, dropped = _keep(tokens, limit)
    if d.eval_path:
        tokens, empty_eval = _tokenize(_dataset(d.eval_path), cfg, text, d.eval_path)
        held, dropped_eval = _keep(tokens, limit)
        train, dropped, empty = rows, dropped + dropped_eval, empty + empty_eval
    else:  # a fixed, seeded choice of held-out prompts
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
        held = [rows[i] for i in order[: d.eval_size]]
        train = [rows[i] for i in sorted(order[d.eval_size :])]
    if not train or not held:
        raise ConfigError(f"data: {d.path}: {len(train)} training and {len(held)} held-out prompts of at most "
                          f"{limit} tokens ({dropped} longer ones dropped, {empty} empty): both must be non-empty")
    return Prompts(train, held[: d.eval_size], dropped, empty)


def _tiny_prompts(cfg: Config, limit: int) -> Prompts:
    """Random-token prompts of 2 to 8 tokens after a BOS, ids 4..vocab−1, from run.seed."""
    gen = torch.Generator().manual_seed(cfg.run.seed)
    vocab, total = cfg.model.vocab_size, cfg.data.num_prompts + cfg.data.eval_size
    lengths = torch.randint(2, min(8, limit - 1) + 1, (total,), generator=gen).tolist()
    rows = [[TINY_BOS] + torch.randint(4, vocab, (n,), generator=gen).tolist() for n in lengths]
    return Prompts(rows[: cfg.data.num_prompts], rows[cfg.data.num_prompts :], 0)


class PromptOrder:
    """Training batches: a fresh permutation of the prompts per epoch from (seed, epoch); a batch never
    spans two epochs (the rest of an epoch too short for a batch is skipped). The position
    (epoch, index) is the whole state, saved in checkpoints."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.index = size, seed, 0, 0
        self._perm: tuple[int, list[int]] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None or self._perm[0] != self.epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.size, generator=gen).tolist())
        return self._perm[1]

    def next_batch(self, batch_size: int) -> list[int]:
        if batch_size > self.size:
            raise ConfigError(f"train.global_batch_size ({batch_size}) exceeds the {self.size} training prompts")
        if self.index + batch_size > self.size:
            self.epoch, self.index = self.epoch + 1, 0
        batch = self._permutation()[self.index : self.index + batch_size]
        self.index += batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ConfigError(f"the checkpoint's prompt order ({state['size']} prompts, seed {state['seed']}) does "
                              f"not match this run's ({self.size}, {self.seed}): same data and run.seed to resume")
        self.epoch, self.index = state["epoch"], state["index"]
