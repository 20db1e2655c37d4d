"""`megatron-bond score`: per-token log-probs (or rewards) of given token sequences at any TP/PP.

Each batch goes through ``models.forward.forward_rows`` (the fused vocab-parallel head; rewards from the
reward model's scalar head at each sequence's last token); batches are split over data-parallel ranks,
and rank 0 writes the rows in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_bond.config import Config, ConfigError, ParallelConfig
from megatron_bond.jsonl import check_token_ids, read_objects, write_jsonl
from megatron_bond.models.forward import forward_rows


def read_token_rows(path: str | Path, cfg: Config, budget: int | None = None) -> list[list[int]]:
    """The input's rows, each checked; ``budget``: tokens per packed microbatch, which every row must fit."""
    if budget is not None and budget < 1:
        raise ConfigError(f"--max-tokens-per-microbatch must be >= 1, got {budget}")
    if budget is not None and cfg.model.family == "gpt":
        raise ConfigError("--max-tokens-per-microbatch: the gpt family's local attention cannot serve packed documents")
    rows = []
    for where, row in read_objects(path):
        tokens = row.get("tokens")
        if not isinstance(tokens, list):
            raise ConfigError(f"{where}: expected a JSON object with a 'tokens' list")
        check_token_ids(tokens, cfg.model.vocab_size, where)
        if len(tokens) < 2 and not cfg.model.reward_head:
            raise ConfigError(f"{where}: log-probs need at least 2 tokens (the first has no context)")
        if len(tokens) > cfg.model.max_seq_length:
            raise ConfigError(f"{where}: {len(tokens)} tokens exceed max_seq_length {cfg.model.max_seq_length}")
        if budget is not None and len(tokens) > budget:
            raise ConfigError(f"{where}: {len(tokens)} tokens exceed --max-tokens-per-microbatch {budget}")
        rows.append(tokens)
    return rows


def _forward(chunks, cfg: Config, batch: list[list[int]], budget: int | None) -> list:
    """Each row's log-probs (list) or reward (float), on every rank."""
    if not batch:
        return []
    values = forward_rows(chunks, cfg, batch, budget)
    return [v[-1].item() for v in values] if cfg.model.reward_head else [v.tolist() for v in values]


def iter_scores(chunks, cfg: Config, rows: list[list[int]], batch_size: int, budget: int | None = None) -> Iterator:
    """Every row's log-probs (or reward), in order, on every rank, as computed (rows are spread over
    data-parallel replicas; ``budget``: each pass's rows packed under that many tokens per microbatch).
    Every rank must consume it."""
    from megatron_bond.runtime.batch import map_over_data_parallel

    forward = torch.no_grad()(lambda batch: _forward(chunks, cfg, batch, budget))  # per call: a generator would leak it
    return map_over_data_parallel(rows, forward, batch_size)


def score_rows(chunks, cfg: Config, rows: list[list[int]], batch_size: int, budget: int | None = None) -> list:
    return list(iter_scores(chunks, cfg, rows, batch_size, budget))


def score(ckpt: str, parallel: ParallelConfig, input_path: str, output_path: str, batch_size: int = 8,
          budget: int | None = None) -> int:
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.runtime import destroy_distributed, init_distributed

    cfg = read_checkpoint_config(ckpt, parallel)
    rows = read_token_rows(input_path, cfg, budget)
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        chunks = load_model_checkpoint(ckpt, cfg)
        for chunk in chunks:
            chunk.eval()
        key = "reward" if cfg.model.reward_head else "logprobs"
        results = ({key: value} for value in iter_scores(chunks, cfg, rows, batch_size, budget))
        write_jsonl(output_path, results, len(rows), "score", writer=torch.distributed.get_rank() == 0)
    finally:
        destroy_distributed()
    return len(rows)
