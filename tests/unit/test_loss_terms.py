"""Each loss term's value and gradient against its formula in DESIGN.md section 1."""

import math

import pytest
import torch

from megatron_bond.bond import (
    ema_update_,
    jbond_loss,
    jbond_reward,
    leave_one_out_baseline,
    reinforce_loss,
)


def test_jbond_reward_is_strict():
    r_policy = torch.tensor([0.0, 1.0, 2.0, 3.0])
    r_anchor = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    expected = torch.tensor([-math.log(16), 0.0, 0.0, 0.0])  # equal to the min is not worse
    torch.testing.assert_close(jbond_reward(r_policy, r_anchor), expected)


def test_leave_one_out_baseline():
    r = torch.tensor([1.0, 2.0, 6.0])
    torch.testing.assert_close(leave_one_out_baseline(r), torch.tensor([4.0, 3.5, 1.5]))
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([5.0])), torch.tensor([0.0]))
    pairs = torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    torch.testing.assert_close(leave_one_out_baseline(pairs, dim=-1), torch.tensor([[3.0, 1.0], [-2.0, 0.0]]))


@pytest.mark.parametrize("beta, gamma", [(0.5, 0.0), (0.2, 1.5), (1.0, 0.5)])
def test_jbond_loss_gradients_are_the_per_sequence_weights(beta, gamma):
    gen = torch.Generator().manual_seed(0)
    b = 5
    logp = torch.randn(b, generator=gen, dtype=torch.float64).requires_grad_(True)
    logp_best = torch.randn(b, generator=gen, dtype=torch.float64).requires_grad_(True)
    logp_anchor = torch.randn(b, generator=gen, dtype=torch.float64)
    r_j = jbond_reward(torch.randn(b, generator=gen), torch.randn(b, 2, generator=gen)).double()
    loss, metrics = jbond_loss(logp, logp_anchor, logp_best, r_j, beta, gamma)
    loss.backward()

    kl_a = logp.detach() - logp_anchor
    returns = r_j - kl_a
    baseline = (returns.sum() - returns) / (b - 1)
    torch.testing.assert_close(logp_best.grad, torch.full((b,), -(1 - beta) / b, dtype=torch.float64))
    torch.testing.assert_close(logp.grad, (-beta * (returns - baseline) + gamma * kl_a) / b)
    expected = ((1 - beta) * -logp_best + beta * -(returns - baseline) * logp + gamma * kl_a * logp).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert metrics["jbond/kl_anchor"].item() == pytest.approx(kl_a.mean().item())


def test_reinforce_baseline_loss():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    logp_ref = torch.tensor([[-1.5, -2.0], [-1.0, -2.0]])
    rewards = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    loss, _ = reinforce_loss(logp, logp_ref, rewards, beta_rl=0.1)
    loss.backward()
    returns = rewards - 0.1 * (logp.detach() - logp_ref)
    advantage = returns - returns.flip(-1)  # the other sample of the same prompt
    torch.testing.assert_close(logp.grad, -advantage / 4)


def test_ema_update_in_place_over_a_list():
    anchor = [torch.ones(3), torch.zeros(2, 2)]
    policy = [torch.full((3,), 3.0), torch.full((2, 2), -1.0)]
    ids = [id(t) for t in anchor]
    ema_update_(anchor, policy, eta=0.25)
    torch.testing.assert_close(anchor[0], torch.full((3,), 1.5))
    torch.testing.assert_close(anchor[1], torch.full((2, 2), -0.25))
    assert [id(t) for t in anchor] == ids
