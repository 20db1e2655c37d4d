"""Rank bodies for packing: forward-only passes (scoring's log-probs, a reward model's scores) of rows
of different lengths, right-padded and packed, on a tiny Gemma 2 at a given layout."""

from __future__ import annotations

import random

import torch

from megatron_bond.models.gpt import build_model
from megatron_bond.models.forward import forward_rows
from megatron_bond.models.layout import init_layout_invariant
from megatron_bond.runtime import destroy_distributed, init_distributed
from tests.distributed.bodies import SEED, tiny_config

GEMMA2 = dict(family="gemma2", post_norms=True, zero_centered_norm=True, scale_embeddings=True,
              activation="gelu_tanh", attn_logit_softcap=50.0, final_logit_softcap=30.0)


def padded_and_packed(tp: int, pp: int, reward: bool, budget: int) -> dict:
    cfg = tiny_config(tp, pp, reward_head=reward, **GEMMA2)
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
