"""One object per algorithm: how many samples per prompt from which weights, which sequences are trained,
their coefficients and their metrics. The trainer's step, the memory planner and the simulator ask it;
none of them branches on an algorithm's name. A new algorithm (BOND with a learned quantile model, say)
is one class here and one entry in ALGORITHMS.

Every loss of losses.py is linear in the log-probs that carry gradients, with stop-gradient
coefficients: L = Σ_i c_i · log π(y_i), so c_i = ∂L/∂log π(y_i), which autograd gives exactly when the
loss is evaluated on the batch's sequence log-probs as leaf tensors. ``coefficients`` does that on the
whole global batch (the 1/B of the mean is in them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .best_of_n import log_quantile_reward
from .losses import backward_kl_loss, forward_kl_loss, jbond_loss, jbond_reward, jeffreys_loss, reinforce_loss


@dataclass
class GlobalBatch:
    """Sequence-level quantities of a step's whole batch (P prompts), fp64, on the host (a few numbers
    per prompt: the maths runs on the CPU whatever device scored them)."""

    logp: Tensor  # [P, policy_samples] log π_t(y) of the policy samples
    logp_anchor: Tensor  # [P, policy_samples] log π_anchor(y) of the same samples (π_ref for REINFORCE)
    r_policy: Tensor  # [P, policy_samples] rewards of the policy samples
    r_anchor: Tensor  # [P, anchor_samples] rewards of the anchor samples


class Algorithm:
    name: ClassVar[str]
    policy_samples: int  # y ~ π_t per prompt
    anchor_samples: int  # y' ~ π_anchor per prompt
    trained_per_prompt: ClassVar[int] = 2  # sequences per prompt in the training pass
    anchor_modes: ClassVar[tuple[str, ...]] = ("ema", "swap", "fixed")  # the first is the default

    def describe(self) -> str:
        raise NotImplementedError

    def trained(self, y: list, y_anchor: list, r_anchor: Tensor) -> list:
        """Per prompt, the ``trained_per_prompt`` responses the training pass trains, in the order of
        ``coefficients``' columns."""
        raise NotImplementedError

    def coefficients(self, batch: GlobalBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """[P, trained_per_prompt] coefficients and the loss terms' metrics."""
        raise NotImplementedError


class _BestOfAnchor(Algorithm):
    """Trains the policy sample y (backward side) and the best of the first ``n_best`` anchor samples
    (forward side; the first one wins a tie)."""

    n_best: int

    def trained(self, y, y_anchor, r_anchor):
        best = r_anchor[:, : self.n_best].argmax(dim=-1).tolist()
        return [[ys[0], ya[b]] for ys, ya, b in zip(y, y_anchor, best)]

    def coefficients(self, batch):
        logp = batch.logp[:, 0].clone().requires_grad_(True)
        # The loss is linear in log π(y'_best): its coefficient does not depend on the value, so a
        # placeholder saves scoring the best anchor samples under the policy.
        logp_best = torch.zeros_like(logp, requires_grad=True)
        loss, metrics = self._loss(batch, logp, logp_best)
        coef = torch.stack(torch.autograd.grad(loss, [logp, logp_best]), dim=-1)
        # Terms that contain the placeholder (its value, not its coefficient) are not reported.
        return coef, {k: v.detach() for k, v in metrics.items() if not k.endswith(("nll_best", "/loss"))}

    def _loss(self, batch, logp, logp_best):
        raise NotImplementedError


@dataclass
class JBond(_BestOfAnchor):
    """J-BOND (Algorithm 2): 1 policy sample, 2 anchor samples, reward −log 16 below both."""

    beta: float
    gamma: float
    eta: float
    name: ClassVar[str] = "jbond"
    policy_samples: int = field(default=1, init=False)
    anchor_samples: int = field(default=2, init=False)
    n_best: int = field(default=2, init=False)

    def describe(self):
        return f"J-BOND β={self.beta} γ={self.gamma} η={self.eta}"

    def _loss(self, batch, logp, logp_best):
        reward_j = jbond_reward(batch.r_policy[:, 0], batch.r_anchor[:, :2]).double()
        return jbond_loss(logp, batch.logp_anchor[:, 0], logp_best, reward_j, self.beta, self.gamma)


@dataclass
class Bond(_BestOfAnchor):
    """BOND's Jeffreys loss: SFT on the best of n anchor samples, REINFORCE with the Monte-Carlo
    log π_BoN/π_ref from k anchor samples (the first max(n, k) serve both)."""

    n: int
    k: int
    beta: float
    anchor: str
    name: ClassVar[str] = "bond"
    policy_samples: int = field(default=1, init=False)

    def __post_init__(self):
        self.anchor_samples = max(self.n, self.k)
        self.n_best = self.n

    def describe(self):
        return f"BOND N={self.n} k={self.k} β={self.beta} anchor={self.anchor}"

    def _loss(self, batch, logp, logp_best):
        forward, _ = forward_kl_loss(logp_best)
        log_q = log_quantile_reward(batch.r_policy[:, 0], batch.r_anchor[:, : self.k], self.n).double()
        backward, metrics = backward_kl_loss(logp, batch.logp_anchor[:, 0], log_q)
        return jeffreys_loss(forward, backward, self.beta), metrics


@dataclass
class Reinforce(Algorithm):
    """The baseline: 2 policy samples, leave-one-out baseline, return r − β_RL·(log π − log π_ref); the
    anchor stays π_ref."""

    beta_rl: float
    name: ClassVar[str] = "reinforce"
    policy_samples: int = field(default=2, init=False)
    anchor_samples: int = field(default=0, init=False)
    anchor_modes: ClassVar[tuple[str, ...]] = ("fixed",)

    def describe(self):
        return f"REINFORCE β_RL={self.beta_rl}"

    def trained(self, y, y_anchor, r_anchor):
        return [[ys[0], ys[1]] for ys in y]

    def coefficients(self, batch):
        logp = batch.logp.clone().requires_grad_(True)
        loss, metrics = reinforce_loss(logp, batch.logp_anchor, batch.r_policy, self.beta_rl)
        (coef,) = torch.autograd.grad(loss, [logp])
        return coef, metrics


ALGORITHMS = {cls.name: cls for cls in (JBond, Bond, Reinforce)}


def algorithm_for(bond) -> Algorithm:
    """The algorithm of a ``bond`` config section (config.BondConfig, read by attribute): the class
    named by ``bond.algorithm``, built from the section's keys of the same names as its fields."""
    cls = ALGORITHMS[bond.algorithm]
    return cls(**{f.name: getattr(bond, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(bond, f.name)})
