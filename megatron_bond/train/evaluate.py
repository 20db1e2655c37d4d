"""Evaluation on the held-out prompts: the two axes of the paper's plots, each with its uncertainty,
and the Best-of-N baseline measured on the same prompts.

- ``quantile/ref``: the mean over prompts of the fraction of k reference samples y_i ~ π_ref whose
  reward is ≤ the policy sample's, an estimate of E_π[p≤_ref(y)] (Best-of-N reaches N/(N+1) where
  rewards do not tie); ``quantile/ref_mid`` counts ties as half (0.5 at π = π_ref whatever ties).
- ``kl/ref``: the mean of log π(y) − log π_ref(y) over policy samples, an unbiased estimate of
  KL(π‖π_ref) (Best-of-N's is log N − (N−1)/N without ties).
- ``*_se``: standard errors over prompts; ``kl/ratio_to_bon`` (with ``_lo``, ``_hi``: a 95 % bootstrap
  over prompts): kl/ref over the Best-of-N KL at the quantile reached, on the task's own tie-aware curve.
- ``bon/reward@N``, ``bon/quantile@N``: what Best-of-N sampling of π_ref reaches on these prompts,
  estimated from the k reference samples over all N-subsets (bond/estimates.py); ``bon/kl@N`` its exact
  KL on the empirical reference distribution (ties included).
- ``kl/bon_at_quantile``: the continuous formula's Best-of-N KL at the quantile reached (N = q/(1−q)).
The sampler seeds are fixed (not per step), so successive evaluations compare the same draws, and
π_ref's samples and rewards are computed once and kept.
"""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state as ps

from megatron_bond.bond import bon_kl_upper_bound
from megatron_bond.bond.estimates import (
    BON_NS, bon_kl, bon_quantile, curve_ns, bon_reward, empirical_bon_curve, kl_ratio_interval, mid_quantile, standard_error,
)
from megatron_bond.config.validate import samples_per_wave
from megatron_bond.rollout.engine import sample_in_waves
from megatron_bond.runtime.batch import dp_share
from megatron_bond.rollout.rollouts import Version
from megatron_bond.train.samples import TRAINING_SAMPLING, response_logprobs
from megatron_bond.train.setup import Trainer


def bon_kl_at_quantile(q: float) -> float:
    """KL(π_BoN‖π_ref) = log N − (N−1)/N at the N whose expected quantile N/(N+1) is q (N ≥ 1)."""
    if q >= 1.0:
        return math.inf
    return bon_kl_upper_bound(max(1.0, q / (1.0 - q)))


def evaluate(t: Trainer, step: int) -> tuple[dict, list[dict]]:
    """The evaluation row, and every held-out prompt's sample (prompt, response, reward, quantile: the
    samples file of this step) on every rank."""
    with t.clock.phase("eval"):
        row, samples = _evaluate(t, step)
    return {**row, "time/eval": t.clock.seconds["eval"], **t.clock.take()}, samples


def _evaluate(t: Trainer, step: int) -> tuple[dict, list[dict]]:
    cfg, dist = t.cfg, t.dist
    mine = dp_share(len(t.prompts.eval), dist.dp, dist.dp_rank)
    first, prompts = mine.start, t.prompts.eval[mine]
    seed = cfg.run.seed
    k = cfg.train.eval_ref_samples

    def sample(role, chunks, n, version):
        t.engine.refit(chunks, version)
        out = sample_in_waves(t.engine, role, prompts, n, TRAINING_SAMPLING, (seed, "eval", role), first,
                              samples_per_wave(cfg)).require(version)
        t.engine.release()  # scoring and the reward model come next
        return out.responses

    y = [rs[0] for rs in sample("policy", t.policy, 1, Version("policy", step))]
    r_policy = t.reward(prompts, y)
    logp = response_logprobs(t.policy, cfg, prompts, y)
    with t.ref.loaded_into(t.anchor) as ref_chunks:
        logp_ref = response_logprobs(ref_chunks, cfg, prompts, y)
        if t.eval_ref_rewards is None:
            y_ref = sample("reference", ref_chunks, k, Version("reference", 0))
            t.eval_ref_rewards = t.reward([p for p in prompts for _ in range(k)],
                                          [r for rs in y_ref for r in rs]).view(len(prompts), k)
    quantile = (t.eval_ref_rewards <= r_policy.unsqueeze(-1)).double().mean(-1)
    quantile_mid = mid_quantile(r_policy, t.eval_ref_rewards)

    samples = [{"prompt": p, "response": r, "reward": rw, "quantile": q, "quantile_mid": qm, "kl_ref": kl,
                "reward_ref": sum(rr) / len(rr), "rewards_ref": rr}
               for p, r, rw, q, qm, kl, rr in zip(prompts, y, r_policy.tolist(), quantile.tolist(), quantile_mid.tolist(),
                                                  (logp - logp_ref).tolist(), t.eval_ref_rewards.tolist())]
    if dist.dp > 1:  # in prompt order: the data-parallel shares are consecutive
        parts = [None] * dist.dp
        torch.distributed.all_gather_object(parts, samples, group=ps.get_data_parallel_group())
        samples = [s for part in parts for s in part]
    return {"step": step, "eval": True, **summarise(samples)}, samples


def summarise(samples: list[dict]) -> dict:
    """The evaluation row's statistics of every held-out prompt's sample (float64 on the host: a few
    numbers per prompt)."""
    column = lambda key: torch.tensor([s[key] for s in samples], dtype=torch.float64)  # noqa: E731
    mean = lambda key: sum(s[key] for s in samples) / len(samples)  # noqa: E731
    quantile, kl = column("quantile"), column("kl_ref")
    ref_rewards = torch.tensor([s["rewards_ref"] for s in samples], dtype=torch.float64)  # [P, k]
    k = ref_rewards.shape[-1]
    q = mean("quantile")
    if k >= 2:  # one reference sample per prompt draws no curve
        curve_kl, curve_q = empirical_bon_curve(ref_rewards, curve_ns(k))
        ratio, ratio_lo, ratio_hi = kl_ratio_interval(quantile, kl, curve_kl, curve_q)
    else:
        ratio = ratio_lo = ratio_hi = math.nan
    return {
        "quantile/ref": q, "quantile/ref_se": standard_error(quantile),
        "quantile/ref_mid": mean("quantile_mid"),
        "kl/ref": mean("kl_ref"), "kl/ref_se": standard_error(kl),
        "kl/bon_at_quantile": bon_kl_at_quantile(q),
        "kl/ratio_to_bon": ratio, "kl/ratio_to_bon_lo": ratio_lo, "kl/ratio_to_bon_hi": ratio_hi,
        "reward/policy": mean("reward"), "reward/ref": mean("reward_ref"),
        **{f"bon/reward@{n}": bon_reward(ref_rewards, n).mean().item() for n in BON_NS if n <= k},
        **{f"bon/quantile@{n}": bon_quantile(ref_rewards, n).mean().item() for n in BON_NS if n < k},
        **{f"bon/kl@{n}": bon_kl(ref_rewards, n).mean().item() for n in BON_NS if n <= k},
    }
