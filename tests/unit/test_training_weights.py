"""The algorithms' per-sequence coefficients (megatron_bond/bond/algorithms.py) are the gradients of the
bond/ losses (DESIGN.md §1, written out here once more by hand), and the per-token weights put them on
response tokens only."""

import math

import pytest
import torch

from megatron_bond.bond import log_quantile_reward
from megatron_bond.bond.algorithms import GlobalBatch, algorithm_for
from megatron_bond.config import BondConfig
from megatron_bond.train.weights import token_weights

F64 = torch.float64


def batch(prompts: int, n_policy: int, n_anchor: int, seed: int = 0) -> GlobalBatch:
    gen = torch.Generator().manual_seed(seed)
    rewards = lambda *s: torch.randint(0, 5, s, generator=gen).to(F64)  # noqa: E731  (ties on purpose)
    return GlobalBatch(logp=-5 * torch.rand(prompts, n_policy, generator=gen, dtype=F64),
                       logp_anchor=-5 * torch.rand(prompts, n_policy, generator=gen, dtype=F64),
                       r_policy=rewards(prompts, n_policy), r_anchor=rewards(prompts, n_anchor))


def loo(x: torch.Tensor) -> torch.Tensor:
    return (x.sum() - x) / (len(x) - 1)


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.0), (0.2, 1.5), (1.0, 0.5)])
def test_jbond_coefficients(beta, gamma):
    b = batch(6, 1, 2)
    coef, terms = algorithm_for(BondConfig(beta=beta, gamma=gamma)).coefficients(b)
    kl = b.logp[:, 0] - b.logp_anchor[:, 0]
    r_j = torch.where(b.r_policy[:, 0] < b.r_anchor.min(-1).values, -math.log(16), 0.0)
    returns = r_j - kl
    torch.testing.assert_close(coef[:, 0], (-beta * (returns - loo(returns)) + gamma * kl) / 6)
    torch.testing.assert_close(coef[:, 1], torch.full((6,), -(1 - beta) / 6, dtype=F64))
    assert terms["jbond/kl_anchor"].item() == pytest.approx(kl.mean().item())
    assert "jbond/loss" not in terms  # it would contain the placeholder for log π(y'_best)


def test_bond_coefficients_use_the_tie_aware_reward():
    algo = algorithm_for(BondConfig(algorithm="bond", n=4, k=6, beta=0.3))
    assert (algo.policy_samples, algo.anchor_samples) == (1, 6)
    b = batch(5, 1, 6)
    coef, _ = algo.coefficients(b)
    log_q = log_quantile_reward(b.r_policy[:, 0], b.r_anchor, 4).double()
    returns = log_q - (b.logp[:, 0] - b.logp_anchor[:, 0])
    torch.testing.assert_close(coef[:, 0], -0.3 * (returns - loo(returns)) / 5)
    torch.testing.assert_close(coef[:, 1], torch.full((5,), -0.7 / 5, dtype=F64))


def test_reinforce_coefficients():
    algo = algorithm_for(BondConfig(algorithm="reinforce", anchor="fixed", beta_rl=0.1))
    assert (algo.policy_samples, algo.anchor_samples) == (2, 0)
    b = batch(3, 2, 0)
    coef, _ = algo.coefficients(b)
    returns = b.r_policy - 0.1 * (b.logp - b.logp_anchor)
    torch.testing.assert_close(coef, -(returns - returns.flip(-1)) / 6)  # mean over 3 × 2 sequences


def test_best_anchor_sample_is_the_first_of_ties_among_the_first_n():
    r = torch.tensor([[1.0, 3.0, 3.0, 9.0], [2.0, 2.0, 0.0, 0.0]])
    y, y_anchor = [["y0"], ["y1"]], [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    assert algorithm_for(BondConfig()).trained(y, y_anchor, r) == [["y0", "b"], ["y1", "e"]]  # J-BOND: of the first 2
    assert algorithm_for(BondConfig(algorithm="bond", n=3)).trained(y, y_anchor, r) == [["y0", "b"], ["y1", "e"]]
    assert algorithm_for(BondConfig(algorithm="reinforce")).trained([["p", "q"]], [[]], r[:1, :0]) == [["p", "q"]]


def test_token_weights_cover_exactly_the_response_labels():
    """Label t predicts token t + 1: a prompt of 3 tokens and a response of 2 put the coefficient on
    labels 2 and 3 (the response tokens), nothing on the prompt or the padding."""
    w = token_weights(torch.tensor([0.5, -2.0]), prompt_lens=[3, 1], response_lens=[2, 4], width=6)
    assert w.tolist() == [[0, 0, 0.5, 0.5, 0, 0], [-2, -2, -2, -2, 0, 0]]
