"""One J-BOND / BOND / REINFORCE step, top to bottom (docs/training.md has the equation of each line).

prompts → rollouts (policy, anchor) → rewards → log-probs through the fused scoring head → per-token
weights from megatron_bond.bond → one optimizer step through the fused training head inside
megatron-core's schedule → anchor update → metrics.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from megatron_bond.bond.algorithms import GlobalBatch
from megatron_bond.models.heads import WeightedLossHead
from megatron_bond.config.validate import samples_per_wave
from megatron_bond.rollout.engine import sample_in_waves
from megatron_bond.rollout.rollouts import Rollouts, Version, mismatch
from megatron_bond.runtime.batch import dp_share, gather_dp
from megatron_bond.runtime.pipeline import broadcast_from_last_stage
from megatron_bond.runtime.tokens import Pack, pack_rows, padded_microbatches
from megatron_bond.train.samples import (
    TRAINING_SAMPLING, response_logprobs, response_token_logprobs, sequence_logprobs, truncated,
)
from megatron_bond.train.setup import Trainer
from megatron_bond.train.update import apply_update
from megatron_bond.train.weights import token_weights


def train_step(t: Trainer, step: int) -> dict:
    cfg, dist = t.cfg, t.dist
    batch_ids = t.order.next_batch(cfg.train.global_batch_size)
    mine = dp_share(len(batch_ids), dist.dp, dist.dp_rank)  # even: check_batch_split at start
    first, share = mine.start, mine.stop - mine.start
    prompts = [t.prompts.train[i] for i in batch_ids[mine]]
    algo = t.algorithm
    n_policy, n_anchor = algo.policy_samples, algo.anchor_samples
    clock = t.clock

    # 1. Rollouts at temperature 1, no top-k / top-p: y ~ π_t, y'_1..y'_n ~ π_anchor, from the weights after the
    #    previous step (the engine is refitted with them, and a rollout of other weights is refused).
    #    Each role is refitted right before its samples: an engine may hold one role's weights at a time.
    with clock.phase("rollout"):
        rollout, refit_s = {}, 0.0
        for role, n, chunks in (("policy", n_policy, t.policy), ("anchor", n_anchor, t.anchor.chunks)):
            version = Version(role, step - 1)
            if not n:  # an algorithm that samples nothing from these weights
                rollout[role] = Rollouts.empty(version, len(prompts))
                continue
            refit_s += t.engine.refit(chunks, version)
            rollout[role] = sample_in_waves(t.engine, role, prompts, n, TRAINING_SAMPLING, (cfg.run.seed, step, role),
                                            first, samples_per_wave(cfg)).require(version)
        t.engine.release()  # the trainer's phases get the engine's memory (vLLM on GPU: asleep)
        y, y_anchor = rollout["policy"].responses, rollout["anchor"].responses

    with clock.phase("scoring"):
        # 2. Rewards r(y), r(y'_j).
        flat_prompts = [p for p in prompts for _ in range(n_policy)]
        flat_y = [r for rs in y for r in rs]
        with clock.span("reward"):
            r_policy = t.reward(flat_prompts, flat_y).view(share, n_policy)
            r_anchor = t.reward([p for p in prompts for _ in range(n_anchor)],
                                [r for rs in y_anchor for r in rs]).view(share, n_anchor)

        # 3. log π_t(y) and log π_anchor(y), re-scored through the fused head (not the sampler's, which are only
        #    compared with them).
        with clock.span("logprobs"):
            token_logp = response_token_logprobs(t.policy, cfg, flat_prompts, flat_y)
            logp = sequence_logprobs(token_logp).view(share, n_policy)
            logp_anchor = response_logprobs(t.anchor.chunks, cfg, flat_prompts, flat_y).view(share, n_policy)
        engine = mismatch([lp for lps in rollout["policy"].logprobs for lp in lps], token_logp)

    with clock.phase("train"):
        # 4. Per-sequence coefficients on the global batch (every rank gathers it), then this rank's share
        #    and the sequences they belong to.
        batch = GlobalBatch(*(gather_dp(x) for x in (logp, logp_anchor, r_policy, r_anchor)))
        coef, terms = algo.coefficients(batch)
        coef = coef[first : first + share]
        train_y = [r for rs in algo.trained(y, y_anchor, r_anchor) for r in rs]
        train_prompts = [p for p in prompts for _ in range(algo.trained_per_prompt)]

        # 5. One optimizer step: Σ_t w_t·log π(y_t) through the fused training head, in Megatron's schedule.
        with clock.span("update"):
            loss, update, (tokens, positions) = _optimizer_step(t, train_prompts, train_y, coef.flatten())
        t.skips.record(update.applied)

        # 6. The anchor follows the policy (EMA in fp32, a swap every M steps, or not at all); not after a
        #    skipped update (nothing moved).
        with clock.span("anchor_update"):
            if update.applied:
                t.anchor.follow_(cfg.bond, step)

    # 7. Metrics of the global batch.
    lengths = gather_dp(torch.tensor([[len(r)] for r in flat_y], dtype=torch.float64).view(share, n_policy))
    cut = gather_dp(torch.tensor(truncated(flat_y, cfg.rollout.max_new_tokens, t.stop_ids),
                                  dtype=torch.float64).view(share, n_policy))
    seconds = {k: clock.seconds[k] for k in ("rollout", "scoring", "train")}
    # On the model's device: the data-parallel group is NCCL on GPUs, which takes no host tensors.
    device = next(t.policy[0].parameters()).device
    engine = engine.to(device)
    # Generated tokens, and the engine's computed and non-padding token positions (fp64: exact counts).
    generated = torch.tensor([float(sum(getattr(r, k) for r in rollout.values())) for k in ("tokens", "computed", "useful")],
                             dtype=torch.float64, device=device)
    torch.distributed.all_reduce(engine[:3], group=ps.get_data_parallel_group())
    torch.distributed.all_reduce(engine[3:], op=torch.distributed.ReduceOp.MAX, group=ps.get_data_parallel_group())
    torch.distributed.all_reduce(generated, group=ps.get_data_parallel_group())
    return {
        "step": step, "loss": loss, "grad_norm": update.grad_norm, "lr": update.lr, "update_ok": update.applied,
        "skipped_steps": t.skips.total,
        "reward/policy": batch.r_policy.mean().item(),
        "reward/anchor": batch.r_anchor.mean().item() if batch.r_anchor.numel() else None,
        "kl/anchor": (batch.logp - batch.logp_anchor).mean().item(),
        "length/policy": lengths.mean().item(),
        "rollout/truncated_fraction": cut.mean().item(),
        **{k: v.item() for k, v in terms.items()},
        # The engine's log-probs against the trainer's on the policy samples (mean over tokens).
        "rollout/engine_kl": (engine[0] / engine[2]).item(), "rollout/engine_kl_k3": (engine[1] / engine[2]).item(),
        "rollout/engine_max_abs_logprob_diff": engine[3].item(),
        "rollout/tokens_per_s": generated[0].item() / seconds["rollout"],
        "rollout/padding_share": 1 - (generated[2] / generated[1]).item() if generated[1] else None,
        "train/padding_share": 1 - tokens / positions,
        "time/rollout": seconds["rollout"], "time/score": seconds["scoring"], "time/train": seconds["train"],
        "time/refit": refit_s, "time/rollout_policy": rollout["policy"].seconds,
        "time/rollout_anchor": rollout["anchor"].seconds,
        **{f"time/{k}": clock.seconds[k] for k in ("reward", "logprobs", "update", "anchor_update")},
        "tokens_per_s": tokens / sum(seconds.values()),
        **clock.take(),
    }


def _optimizer_step(t: Trainer, prompts: list[list[int]], responses: list[list[int]], coef: torch.Tensor):
    """Forward and backward of Σ_t w_t·log π(y_t) over this rank's sequences, then the update (skipped,
    with the scheduler, when the gradient is non-finite anywhere). Returns (loss of the global batch,
    the update, (label positions trained, input positions computed: the padding included))."""
    cfg = t.cfg
    device = next(t.policy[0].parameters()).device
    micro = training_microbatches(cfg, prompts, responses, coef)
    t.optimizer.zero_grad()
    loss = forward_backward(t.policy, [m.to(device) for m in micro])
    update = apply_update(t.optimizer, t.scheduler, cfg.optimizer.clip_grad)
    trained = torch.tensor([float(sum(len(p) + len(r) - 1 for p, r in zip(prompts, responses))),
                            float(sum(m.size for m in micro))], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(trained, group=ps.get_data_parallel_group())
    return loss, update, tuple(trained.tolist())


def training_microbatches(cfg, prompts: list[list[int]], responses: list[list[int]], coef: torch.Tensor) -> list[Pack]:
    """This rank's (prompt + response) rows with each response's coefficient on its labels: packed under
    train.max_tokens_per_microbatch (train.packing), else right-padded in parallel.micro_batch_size rows."""
    rows = [p + r for p, r in zip(prompts, responses)]
    weights = token_weights(coef, [len(p) for p in prompts], [len(r) for r in responses], max(map(len, rows)) - 1)
    split = cfg.parallel.tp if cfg.parallel.sequence_parallel else 1  # sequence parallelism splits the positions
    if cfg.train.packing:
        return pack_rows(rows, cfg.train.max_tokens_per_microbatch, pad_id=cfg.model.pad_token_id, weights=weights,
                         multiple_of=split, same_size=cfg.parallel.pp > 1)
    return padded_microbatches(rows, cfg.parallel.micro_batch_size, pad_id=cfg.model.pad_token_id, weights=weights,
                               multiple_of=split)


def forward_backward(policy: list, micro: list[Pack]) -> float:
    """Gradients of Σ w·log π(labels) in the policy's (DDP-wrapped) chunks, accumulated over the
    microbatches (1F1B under PP, which sends one shape per pass: the packs of a pass have one size, the
    padded microbatches one width) and summed over data-parallel ranks; returns the global batch's loss."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        packed = None if b.cu_seqlens is None else b.packed_seq_params()
        out = model(b.tokens, b.positions, None, head=WeightedLossHead(b.labels, b.weights), packed_seq_params=packed)
        counted = (b.weights != 0).sum().to(torch.int)
        # Three outputs: Megatron's per-token-loss convention (the sum is taken as it is, see weights.py).
        return out, lambda value: (value, counted, {"loss": value.detach()})

    for chunk in policy:
        chunk.train()
        chunk.zero_grad_buffer()
    out = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=policy, num_microbatches=len(micro),
        seq_length=micro[0].tokens.shape[1], micro_batch_size=micro[0].tokens.shape[0], forward_only=False,
    )
    loss = torch.stack([o["loss"] for o in out]).sum().reshape(1).float() if ps.is_pipeline_last_stage() else None
    loss = broadcast_from_last_stage(loss, (1,))
    torch.distributed.all_reduce(loss, group=ps.get_data_parallel_group())
    return loss.item()
