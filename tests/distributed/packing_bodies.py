"""Rank bodies for packing: forward-only passes (scoring's log-probs, a reward model's scores) of rows
of different lengths, right-padded and packed, on a tiny Gemma at a given layout."""

from __future__ import annotations

import random

import torch

from megatron_bond.models.gpt import build_model
from megatron_bond.models.forward import forward_rows
from megatron_bond.models.layout import init_layout_invariant
from megatron_bond.runtime import destroy_distributed, init_distributed
from tests.distributed.bodies import SEED, tiny_config
from tests.distributed.spec_bodies import FAMILIES

def padded_and_packed(tp: int, pp: int, family: str, reward: bool, budget: int) -> dict:
    """spec_bodies' families over tiny_config's 4 layers: sliding windows of 4 positions (shorter than
    most rows) on alternate layers, Gemma 3's local RoPE base on them."""
    model = dict(FAMILIES[family], layer_types=FAMILIES[family]["layer_types"] * 2)
    cfg = tiny_config(tp, pp, reward_head=reward, **model)
    rng = random.Random(3)
    rows = [[rng.randrange(128) for _ in range(rng.randint(2, cfg.model.max_seq_length))] for _ in range(9)]
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    try:
        chunks = build_model(cfg)
        init_layout_invariant(chunks, SEED)
        for chunk in chunks:
            chunk.eval()
        with torch.no_grad():
            return {"rows": rows, "padded": forward_rows(chunks, cfg, rows), "packed": forward_rows(chunks, cfg, rows, budget)}
    finally:
        destroy_distributed()
