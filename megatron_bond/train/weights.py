"""Sequence coefficients (megatron_bond/bond/algorithms.py) → per-token stop-gradient weights, with the
normalisation defined once.

Normalisation: ``bond/`` averages over the prompts it is given, and it is given the whole global batch
(every rank gathers it), so the 1/B is in the coefficients. The training pass must then sum (not
average) over microbatches and data-parallel ranks: the trainer runs Megatron in per-token-loss mode
(no division by the number of microbatches, DDP sums) and scales nothing at the end (loop.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_weights(coef: Tensor, prompt_lens: list[int], response_lens: list[int], width: int) -> Tensor:
    """[n, width] fp32: each sequence's coefficient on the label positions of its response tokens
    (label t is token t + 1), 0 on prompt tokens and padding."""
    weights = torch.zeros(len(prompt_lens), width, dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        weights[i, p - 1 : p - 1 + r] = float(coef[i])
    return weights
