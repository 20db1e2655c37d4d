"""What an engine returns and how it is checked: the version of the weights a rollout was drawn from,
its responses with the sampler's log-probs, the refusal of a stale one, the per-request seed, and the
mismatch between the engine's log-probs and the trainer's (rollout/engine.py is the boundary itself)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Version:
    """Which weights: a role and the step they are the weights after (π_ref: always 0)."""

    role: str
    step: int


class StaleRollout(RuntimeError):
    """A rollout drawn from weights other than the ones it is used with."""


@dataclass
class Rollouts:
    version: Version
    responses: list[list[list[int]]]  # [prompt][sample] tokens, the stop token included where one was sampled
    logprobs: list[list[list[float]]]  # the sampler's log-prob of each token (rollout/sampling.py's definition)
    seconds: float
    computed: int = 0  # token positions the engine's forwards computed, and the non-padding ones of them
    useful: int = 0

    @classmethod
    def empty(cls, version: Version, prompts: int) -> "Rollouts":
        """No samples of any prompt (an algorithm that draws none from these weights)."""
        return cls(version, [[] for _ in range(prompts)], [[] for _ in range(prompts)], 0.0)

    @classmethod
    def joined(cls, waves: list["Rollouts"]) -> "Rollouts":
        """Waves of samples of the same prompts from the same weights as one rollout: each prompt's
        samples in wave order."""
        first = waves[0]
        if any(w.version != first.version for w in waves):
            raise StaleRollout(f"waves of one rollout drawn from different weights: {[w.version for w in waves]}")
        return cls(first.version, [sum(rs, []) for rs in zip(*(w.responses for w in waves))],
                   [sum(ls, []) for ls in zip(*(w.logprobs for w in waves))], sum(w.seconds for w in waves),
                   sum(w.computed for w in waves), sum(w.useful for w in waves))

    @property
    def tokens(self) -> int:
        return sum(len(r) for rs in self.responses for r in rs)

    def require(self, current: Version) -> "Rollouts":
        if self.version != current:
            raise StaleRollout(f"a rollout of the {self.version.role} weights after step {self.version.step} is used "
                               f"where the {current.role} weights after step {current.step} are current: refused")
        return self


def derived_seed(*parts) -> int:
    """A 63-bit seed from any tuple of names and numbers (stable across processes and platforms)."""
    import hashlib

    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def mismatch(engine_logprobs: list[list[float]], trainer_logprobs: list[torch.Tensor]) -> torch.Tensor:
    """Sums over the sampled tokens of the engine's and the trainer's log-probs of the same responses, to
    be summed over ranks (fp64): [Σ (log p_engine − log p_trainer), Σ k3, token count] and the largest
    |difference|, where k3 = ρ − 1 − log ρ with ρ = p_trainer/p_engine (≥ 0, an estimate of
    KL(engine ‖ trainer) under the engine's samples with less variance than the plain difference)."""
    sums = torch.zeros(3, dtype=torch.float64)
    worst = torch.zeros(1, dtype=torch.float64)
    for eng, ours in zip(engine_logprobs, trainer_logprobs):
        if not eng:
            continue
        log_ratio = ours.double() - torch.tensor(eng, dtype=torch.float64)  # log ρ
        sums += torch.stack([-log_ratio.sum(), (log_ratio.exp() - 1 - log_ratio).sum(),
                             torch.tensor(float(len(eng)), dtype=torch.float64)])
        worst = torch.maximum(worst, log_ratio.abs().max().reshape(1))
    return torch.cat([sums, worst])
