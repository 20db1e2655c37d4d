"""Sequence coefficients → per-token stop-gradient weights, with the normalisation defined once.

Every BOND, J-BOND and REINFORCE loss of ``megatron_bond.bond`` is linear in the sequence log-probs
that carry gradients, with stop-gradient coefficients: L = Σ_i c_i · log π(y_i). So c_i is ∂L/∂log π(y_i),
which autograd gives exactly when the loss is evaluated on the global batch's sequence log-probs as
leaf tensors. The maths stays in ``bond/`` (one definition of each loss); here it only becomes weights.

Normalisation: ``bond/`` averages over the prompts it is given, and it is given the whole global batch
(every rank gathers it), so the 1/B is in the coefficients. The training pass must then sum (not
average) over microbatches and data-parallel ranks: the trainer runs Megatron in per-token-loss mode
(no division by the number of microbatches, DDP sums) and scales nothing at the end (loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_bond.bond import (
    backward_kl_loss,
    forward_kl_loss,
    jbond_loss,
    jbond_reward,
    jeffreys_loss,
    log_quantile_reward,
    reinforce_loss,
)
from megatron_bond.config import BondConfig


@dataclass
class GlobalBatch:
    """Sequence-level quantities of the whole step's batch (P prompts), fp64, on the host of every rank
    (a few numbers per prompt: the BOND maths runs on the CPU whatever device scored them)."""

    logp: Tensor  # [P, n_policy] log π_t(y) of the policy samples
    logp_anchor: Tensor  # [P, n_policy] log π_anchor(y) of the same samples (π_ref for REINFORCE)
    r_policy: Tensor  # [P, n_policy] rewards of the policy samples
    r_anchor: Tensor  # [P, n_anchor] rewards of the anchor samples (n_anchor = 0 for REINFORCE)


def samples_per_prompt(bond: BondConfig) -> tuple[int, int]:
    """(policy samples, anchor samples) per prompt."""
    if bond.algorithm == "jbond":
        return 1, 2
    if bond.algorithm == "bond":
        return 1, max(bond.n, bond.k)
    return 2, 0


def best_anchor_index(bond: BondConfig, r_anchor: Tensor) -> Tensor:
    """Per prompt, the anchor sample the forward term trains on: the best of the first N (of 2 for
    J-BOND); the first one wins a tie."""
    n = 2 if bond.algorithm == "jbond" else bond.n
    return r_anchor[:, :n].argmax(dim=-1)


def sequence_coefficients(bond: BondConfig, batch: GlobalBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """[P, 2] coefficients of each prompt's two training sequences, and the loss terms' metrics.

    Training sequences: J-BOND and BOND train on the policy sample y and on the best anchor sample;
    REINFORCE on its two policy samples.
    """
    if bond.algorithm == "reinforce":
        logp = batch.logp.clone().requires_grad_(True)
        loss, metrics = reinforce_loss(logp, batch.logp_anchor, batch.r_policy, bond.beta_rl)
        (coef,) = torch.autograd.grad(loss, [logp])
        return coef, metrics
    logp = batch.logp[:, 0].clone().requires_grad_(True)
    # The loss is linear in log π(y'_best): its coefficient does not depend on the value, so a
    # placeholder saves scoring the best anchor samples under the policy.
    logp_best = torch.zeros_like(logp, requires_grad=True)
    if bond.algorithm == "jbond":
        reward_j = jbond_reward(batch.r_policy[:, 0], batch.r_anchor[:, :2]).double()
        loss, metrics = jbond_loss(logp, batch.logp_anchor[:, 0], logp_best, reward_j, bond.beta, bond.gamma)
    else:
        forward, _ = forward_kl_loss(logp_best)
        log_q = log_quantile_reward(batch.r_policy[:, 0], batch.r_anchor[:, : bond.k], bond.n).double()
        backward, metrics = backward_kl_loss(logp, batch.logp_anchor[:, 0], log_q)
        loss = jeffreys_loss(forward, backward, bond.beta)
    coef = torch.stack(torch.autograd.grad(loss, [logp, logp_best]), dim=-1)
    # Terms that contain the placeholder (its value, not its coefficient) are not reported.
    return coef, {k: v.detach() for k, v in metrics.items() if not k.endswith(("nll_best", "/loss"))}


def token_weights(coef: Tensor, prompt_lens: list[int], response_lens: list[int], width: int) -> Tensor:
    """[n, width] fp32: each sequence's coefficient on the label positions of its response tokens
    (label t is token t + 1), 0 on prompt tokens and padding."""
    weights = torch.zeros(len(prompt_lens), width, dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens)):
        weights[i, p - 1 : p - 1 + r] = float(coef[i])
    return weights
