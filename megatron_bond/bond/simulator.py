"""An exact Best-of-N problem: a tabular autoregressive policy over all sequences of a tiny vocabulary.

The support (V**L sequences) is small enough to enumerate, so expectations are exact sums and every
BOND objective can be checked against its closed form; sampling from the same tables gives the
estimators' view. L = 1 is a plain categorical policy (softmax over V logits). A ``factorised`` problem
has one logits row per position (π(y) = Π_t softmax(θ_t)[y_t], no dependence on the prefix): a class that
cannot represent π_BoN, whose reward couples the positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .algorithms import Algorithm, Bond, GlobalBatch, JBond
from .best_of_n import bon_probs, exact_quantiles, kl, log_bon_ratio
from .fronts import interp_within
from .losses import (
    backward_kl_loss,
    ema_update_,
    forward_kl_loss,
    jeffreys_loss,
    kl_regulariser_loss,
    policy_gradient_loss,
    JBOND_PENALTY,
)


@dataclass
class SequenceProblem:
    vocab: int
    length: int
    rewards: Tensor  # [V**L], one per sequence (distinct unless ties are wanted)
    ref_logits: Tensor  # [num_prefixes, V], or [L, V] when factorised
    factorised: bool = False

    @classmethod
    def random(cls, vocab: int = 3, length: int = 2, seed: int = 0, ties: bool = False,
               factorised: bool = False) -> "SequenceProblem":
        gen = torch.Generator().manual_seed(seed)
        size = vocab**length
        rewards = torch.randperm(size, generator=gen).to(torch.float64)
        if ties:
            rewards = torch.div(rewards, 2, rounding_mode="floor")
        rows = length if factorised else sum(vocab**t for t in range(length))
        ref_logits = torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
        return cls(vocab, length, rewards, ref_logits, factorised)

    def sequences(self) -> Tensor:
        """All sequences [V**L, L] in index order (first token most significant)."""
        idx = torch.arange(self.vocab**self.length)
        digits = [(idx // self.vocab ** (self.length - 1 - t)) % self.vocab for t in range(self.length)]
        return torch.stack(digits, dim=-1)

    def _prefix_rows(self) -> Tensor:
        """Row of the logits table that predicts token t of each sequence: [V**L, L]."""
        seqs, rows = self.sequences(), []
        if self.factorised:
            return torch.arange(self.length).expand(len(seqs), -1)
        for t in range(self.length):
            offset = sum(self.vocab**s for s in range(t))
            code = torch.zeros(len(seqs), dtype=torch.long)
            for s in range(t):
                code = code * self.vocab + seqs[:, s]
            rows.append(offset + code)
        return torch.stack(rows, dim=-1)

    def log_probs(self, logits: Tensor) -> Tensor:
        """Sequence log-probs of every sequence under the policy with this logits table: [V**L]."""
        token_logp = torch.log_softmax(logits, dim=-1)[self._prefix_rows(), self.sequences()]
        return token_logp.sum(-1)

    def sample(self, logits: Tensor, n: int, gen: torch.Generator) -> Tensor:
        """n sequence indices drawn from the policy."""
        probs = self.log_probs(logits).detach().exp()
        return torch.multinomial(probs, n, replacement=True, generator=gen)

    def ref_probs(self) -> Tensor:
        return self.log_probs(self.ref_logits).exp()

    def quantile(self, probs: Tensor) -> Tensor:
        """Expected reference quantile E_{y~probs}[p≤_ref(y)]."""
        p_le, _ = exact_quantiles(self.ref_probs(), self.rewards)
        return (probs * p_le.squeeze(-1)).sum()

    def point(self, logits: Tensor) -> dict:
        """Where the policy with these logits stands, exactly: E[p≤_ref], E[r] and KL(π‖π_ref)."""
        probs = self.log_probs(logits).detach().exp()
        return {"quantile": self.quantile(probs).item(), "reward": (probs * self.rewards).sum().item(),
                "kl_ref": kl(probs, self.ref_probs()).item()}


def bon_curve(problem: SequenceProblem, max_n: int = 400) -> tuple[list[float], list[float]]:
    """The Best-of-N curve of π_ref for N = 1..max_n−1: (expected quantile, KL(π_BoN‖π_ref))."""
    ref = problem.ref_probs()
    points = [bon_probs(ref, problem.rewards, n) for n in range(1, max_n)]
    return [problem.quantile(p).item() for p in points], [kl(p, ref).item() for p in points]


FRONT_QUANTILES = np.linspace(0.8, 0.97, 18)


def at_first(history: list[dict], key: str, value: float) -> dict | None:
    """The trajectory's point where ``key`` first reaches ``value`` (every float of the row linear between
    the two logged points around it), or None if it never does."""
    for i, h in enumerate(history):
        if h[key] >= value:
            if i == 0:  # the previous point is below value, so the two differ
                return dict(h)
            a = history[i - 1]
            w = (value - a[key]) / (h[key] - a[key])
            return {k: (1 - w) * a[k] + w * h[k] for k in h if isinstance(h[k], float)}
    return None


def front_ratio(history: list[dict], curve: tuple[list[float], list[float]], grid=FRONT_QUANTILES) -> tuple[float, float]:
    """How far above the Best-of-N curve a trajectory runs: the mean over the quantiles q of ``grid`` of
    KL(π‖π_ref) / KL_BoN(q), the KL taken where the trajectory first reaches q (1 = on the curve).
    Returns (that mean over the q reached, the fraction of ``grid`` reached). A grid point beyond the
    curve's ends is refused (ValueError), not read at the curve's last KL."""
    ratios = []
    for q in grid:
        point = at_first(history, "quantile", q)
        if point is None:
            break
        ratios.append(point["kl_ref"] / interp_within(q, np.asarray(curve[0]), np.asarray(curve[1]), "front_ratio's quantile"))
    return (float(np.mean(ratios)) if ratios else float("nan")), len(ratios) / len(grid)


def exact_jbond_step(
    problem: SequenceProblem, logits: Tensor, anchor: Tensor, beta: float, gamma: float
) -> Tensor:
    """The J-BOND loss in exact expectation (its gradient is the expected J-BOND gradient).

    Forward term under Best-of-2 of the anchor; backward term under the policy with
    E[r_J(y)] = −log 16 · P(both anchor samples beat y) = −log 16 · (1 − p≤_anchor(y))².
    """
    logp = problem.log_probs(logits)
    logp_anchor = problem.log_probs(anchor).detach()
    anchor_probs = logp_anchor.exp()
    pi = logp.detach().exp()
    p_le, _ = exact_quantiles(anchor_probs, problem.rewards)
    reward_j = JBOND_PENALTY * (1 - p_le.squeeze(-1)) ** 2
    returns = reward_j - (logp.detach() - logp_anchor)
    forward, _ = forward_kl_loss(logp, sample_weight=bon_probs(anchor_probs, problem.rewards, 2))
    backward = policy_gradient_loss(logp, returns, (pi * returns).sum(), sample_weight=pi)
    reg = kl_regulariser_loss(logp, logp_anchor, sample_weight=pi)
    return jeffreys_loss(forward, backward, beta) + gamma * reg


def run_jbond(
    problem: SequenceProblem, steps: int, lr: float, beta: float = 0.5, gamma: float = 0.0,
    eta: float = 0.05, log_every: int = 0, swap_every: int = 0, batch: int = 0, seed: int = 0,
) -> list[dict]:
    """J-BOND with an EMA anchor from π_ref (or, with ``swap_every``, an anchor replaced by the policy
    every that many steps), in exact expectation, or with ``batch`` sampled prompts a step (sampler
    seeded by ``seed``): the quantile, reward and KL(π‖π_ref) after each step."""
    logits = problem.ref_logits.clone().requires_grad_(True)
    anchor = problem.ref_logits.clone()
    opt = torch.optim.Adam([logits], lr=lr)
    algorithm, gen = JBond(beta=beta, gamma=gamma, eta=eta), torch.Generator().manual_seed(seed)
    history = []
    curve_q, curve_kl = bon_curve(problem) if log_every else ([], [])
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = (sampled_loss(problem, logits, algorithm, anchor, batch, gen) if batch
                else exact_jbond_step(problem, logits, anchor, beta, gamma))
        loss.backward()
        opt.step()
        if not swap_every:
            ema_update_([anchor], [logits.detach()], eta)
        elif step % swap_every == 0:
            anchor = logits.detach().clone()
        probs = problem.log_probs(logits).detach().exp()
        anchor_probs = problem.log_probs(anchor).exp()
        history.append({"step": step, **problem.point(logits), "kl_anchor": kl(probs, anchor_probs).item()})
        if log_every and step % log_every == 0:
            h = history[-1]
            bon_kl = float(np.interp(h["quantile"], curve_q, curve_kl))
            print(f"step {step:5d}  quantile {h['quantile']:.4f}  KL(pi|ref) {h['kl_ref']:.4f}  "
                  f"Best-of-N KL at this quantile {bon_kl:.4f}  KL(pi|anchor) {h['kl_anchor']:.5f}",
                  flush=True)
    return history


def exact_jeffreys_loss(problem: SequenceProblem, logits: Tensor, target: Tensor, beta: float) -> Tensor:
    """(1−β)·KL(target‖π) + β·KL(π‖target) through the estimators' expected gradients, with the exact
    return log(target/π_ref): its gradient is the divergence's (test_bond_objectives.py)."""
    logp = problem.log_probs(logits)
    ref_logp = problem.ref_probs().log()
    pi = logp.detach().exp()
    log_q = target.log() - ref_logp
    returns = log_q - (logp.detach() - ref_logp)
    forward, _ = forward_kl_loss(logp, sample_weight=target)
    backward, _ = backward_kl_loss(logp, ref_logp, log_q, baseline=(pi * returns).sum(), sample_weight=pi)
    return jeffreys_loss(forward, backward, beta)


def sampled_loss(problem: SequenceProblem, logits: Tensor, algorithm: Algorithm, anchor_logits: Tensor, batch: int,
                 gen: torch.Generator) -> Tensor:
    """An algorithm's loss from samples, estimated as train/step.py estimates it, through the same object
    (bond/algorithms.py): ``batch`` prompts (one here: the problem has a single context), the algorithm's
    samples from the policy and the anchor, its stop-gradient coefficients on the batch and
    Σ c_i·log π(y_i) over the sequences it trains."""
    logp = problem.log_probs(logits)
    logp_anchor = problem.log_probs(anchor_logits).detach()
    y = problem.sample(logits, batch * algorithm.policy_samples, gen).view(batch, algorithm.policy_samples)
    y_anchor = (problem.sample(anchor_logits, batch * algorithm.anchor_samples, gen) if algorithm.anchor_samples
                else torch.zeros(0, dtype=torch.long)).view(batch, algorithm.anchor_samples)
    r = problem.rewards.double()
    coef, _ = algorithm.coefficients(GlobalBatch(logp.detach()[y].double(), logp_anchor[y].double(), r[y], r[y_anchor]))
    trained = torch.tensor(algorithm.trained(y.tolist(), y_anchor.tolist(), r[y_anchor]))
    return (coef.to(logp.dtype) * logp[trained]).sum()


def sampled_jeffreys_loss(problem: SequenceProblem, logits: Tensor, n: int, k: int, batch: int, beta: float,
                          gen: torch.Generator) -> Tensor:
    """BOND's Jeffreys loss from samples of π_ref, as the trainer estimates it (``Bond``): SFT on the best of
    n samples (forward), REINFORCE with the Monte-Carlo log π_BoN/π_ref from k samples (backward)."""
    return sampled_loss(problem, logits, Bond(n=n, k=k, beta=beta, anchor="fixed"), problem.ref_logits, batch, gen)


def exact_backward_kl_loss(problem: SequenceProblem, logits: Tensor, n: int) -> Tensor:
    """Backward-KL REINFORCE loss in exact expectation, with the exact return log π_BoN/π_ref
    (Theorem 1: both quantiles, so ties are handled)."""
    logp = problem.log_probs(logits)
    ref = problem.ref_probs()
    p_le, p_lt = (q.squeeze(-1) for q in exact_quantiles(ref, problem.rewards))
    pi = logp.detach().exp()
    log_q = log_bon_ratio(p_le, p_lt, n)
    returns = log_q - (logp.detach() - ref.log())
    loss, _ = backward_kl_loss(logp, ref.log(), log_q, baseline=(pi * returns).sum(), sample_weight=pi)
    return loss
