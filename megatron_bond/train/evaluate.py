"""Evaluation on the held-out prompts: the two axes of the paper's plots.

- ``quantile/ref``: the mean over prompts of the fraction of k reference samples y_i ~ π_ref whose
  reward is ≤ the policy sample's, an estimate of E_π[p≤_ref(y)] (Best-of-N reaches N/(N+1)).
- ``kl/ref``: the mean of log π(y) − log π_ref(y) over policy samples, an unbiased estimate of
  KL(π‖π_ref) (Best-of-N's is log N − (N−1)/N).
- ``kl/bon_at_quantile``: the Best-of-N KL at the quantile reached (N = q/(1−q)), for comparison.
The sampler seeds are fixed (not per step), so successive evaluations compare the same draws, and
π_ref's samples and rewards are computed once and kept.
"""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state as ps

from megatron_bond.bond import bon_kl_upper_bound
from megatron_bond.runtime.batch import dp_share
from megatron_bond.train.samples import response_logprobs, sample_responses
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

    y = [rs[0] for rs in sample_responses(t.policy, cfg, prompts, 1, (seed, "eval", "policy"), first, t.stop_ids)]
    r_policy = t.reward(prompts, y)
    logp = response_logprobs(t.policy, cfg, prompts, y)
    with t.ref.loaded_into(t.anchor) as ref_chunks:
        logp_ref = response_logprobs(ref_chunks, cfg, prompts, y)
        if t.eval_ref_rewards is None:
            y_ref = sample_responses(ref_chunks, cfg, prompts, k, (seed, "eval", "reference"), first, t.stop_ids)
            t.eval_ref_rewards = t.reward([p for p in prompts for _ in range(k)],
                                          [r for rs in y_ref for r in rs]).view(len(prompts), k)
    quantile = (t.eval_ref_rewards <= r_policy.unsqueeze(-1)).double().mean(-1)

    samples = [{"prompt": p, "response": r, "reward": rw, "quantile": q, "kl_ref": kl, "reward_ref": rr}
               for p, r, rw, q, kl, rr in zip(prompts, y, r_policy.tolist(), quantile.tolist(), (logp - logp_ref).tolist(),
                                              t.eval_ref_rewards.mean(-1).tolist())]
    if dist.dp > 1:  # in prompt order: the data-parallel shares are consecutive
        parts = [None] * dist.dp
        torch.distributed.all_gather_object(parts, samples, group=ps.get_data_parallel_group())
        samples = [s for part in parts for s in part]
    q, kl, reward, reward_ref = (sum(s[key] for s in samples) / len(samples)
                                 for key in ("quantile", "kl_ref", "reward", "reward_ref"))
    return {"step": step, "eval": True, "quantile/ref": q, "kl/ref": kl, "kl/bon_at_quantile": bon_kl_at_quantile(q),
            "reward/policy": reward, "reward/ref": reward_ref}, samples
