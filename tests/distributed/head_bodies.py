"""Rank bodies for the fused log-prob heads: bare ops at TP=2, and inside Megatron's pipeline."""

from __future__ import annotations

import torch

from megatron_bond.config import ParallelConfig
from megatron_bond.models.heads import TokenLogProbHead, WeightedLossHead, sequence_logprobs
from megatron_bond.models.layout import gather_full, params_as_grads
from megatron_bond.runtime import destroy_distributed, init_distributed
from megatron_bond.runtime.pipeline import broadcast_from_last_stage
from tests.distributed.bodies import MBS, SEED, SEQ, ddp_model, run_schedule, tiny_config

VOCAB, PAD_TO = 120, 8  # padded to 128: at TP=2 the second shard ends in 8 padding rows


def ops_at_tp2(backend: str, vocab: int) -> dict:
    """The vocab-parallel ops on two shards of 64 rows against the full-vocabulary reference:
    {case: {quantity: (max |Δ|, max |reference|)}}. ``vocab`` ≤ 64 leaves the second shard all padding."""
    from megatron.core import parallel_state as ps

    from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss
    from megatron_bond.ops.reference import reference_token_logprobs, reference_weighted_loss

    init_distributed(ParallelConfig(tp=2), seed=SEED)
    try:
        gen = torch.Generator().manual_seed(0)
        T, H = 11, 16
        h = (0.7 * torch.randn(T, H, generator=gen)).requires_grad_(True)
        w_full = 0.7 * torch.randn(128, H, generator=gen)
        y = torch.randint(0, vocab, (T,), generator=gen)
        weights = torch.randn(T, generator=gen)
        rank = ps.get_tensor_model_parallel_rank()
        w = w_full[rank * 64:(rank + 1) * 64].clone().requires_grad_(True)
        w_ref = w_full.clone().requires_grad_(True)
        errors = {}
        for name, opts in {"plain": {}, "softcap_temp": {"softcap": 2.0, "temperature": 0.8}}.items():
            spec = HeadSpec(vocab_start=rank * 64, vocab_size=vocab, chunk_size=4,
                            group=ps.get_tensor_model_parallel_group(), backend=backend, **opts)
            logp, ent = token_logprobs(h, w, y, spec, entropy=True)
            ref_logp, ref_ent = reference_token_logprobs(h, w_ref, y, vocab_size=vocab, **opts)
            gh, gw = torch.autograd.grad((logp * weights).sum(), (h, w))
            rh, rw = torch.autograd.grad((ref_logp * weights).sum(), (h, w_ref))
            loss = weighted_logprob_loss(h, w, y, weights, spec)
            fh, fw = torch.autograd.grad(loss, (h, w))
            ref_loss = reference_weighted_loss(h, w_ref, y, weights, vocab_size=vocab, **opts)
            lh, lw = torch.autograd.grad(ref_loss, (h, w_ref))
            shard = slice(rank * 64, (rank + 1) * 64)
            pairs = {"logp": (logp, ref_logp), "entropy": (ent, ref_ent), "score_grad_h": (gh, rh),
                     "score_grad_w": (gw, rw[shard]), "loss": (loss, ref_loss), "loss_grad_h": (fh, lh),
                     "loss_grad_w": (fw, lw[shard])}
            errors[name] = {k: ((a - b).abs().max().item(), b.abs().max().item()) for k, (a, b) in pairs.items()}
        return errors
    finally:
        destroy_distributed()


def _data(num_microbatches: int) -> list[dict]:
    """Token batches with response masks of varying length; one sequence fully masked."""
    gen = torch.Generator().manual_seed(11)
    out = []
    for m in range(num_microbatches):
        tokens = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen)
        prompt = torch.randint(2, SEQ - 2, (MBS, 1), generator=gen)
        mask = (torch.arange(SEQ).unsqueeze(0) >= prompt).float()
        if m == 1:
            mask[0] = 0.0
        coef = torch.randn(MBS, 1, generator=gen)
        out.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "mask": mask, "weights": coef * mask})
    return out


def _positions():
    return torch.arange(SEQ).expand(MBS, SEQ)


def _score_step(data_iterator, model):
    batch = next(data_iterator)
    logp = model(batch["tokens"], _positions(), None, head=TokenLogProbHead(batch["labels"]))
    return logp, lambda out: (out.sum(), {"seq_logp": sequence_logprobs(out, batch["mask"]).detach()})


def _train_step(data_iterator, model):
    batch = next(data_iterator)
    loss = model(batch["tokens"], _positions(), None, head=WeightedLossHead(batch["labels"], batch["weights"]))
    return loss, lambda out: (out, {"loss": out.detach()})


def heads_in_pipeline(tp: int, pp: int, softcap: float | None = None, num_microbatches: int = 3) -> dict:
    """Sequence log-probs (scoring head) and the fused weighted loss + full gradients (training head)."""
    from megatron.core import parallel_state as ps

    cfg = tiny_config(tp, pp, vocab_size=VOCAB, make_vocab_size_divisible_by=PAD_TO,
                      final_logit_softcap=softcap)
    init_distributed(cfg.parallel, seed=SEED)
    try:
        model = ddp_model(cfg)
        data = _data(num_microbatches)
        out = run_schedule(model, data, forward_only=True, forward_step=_score_step)
        seq = torch.cat([o["seq_logp"] for o in out]) if ps.is_pipeline_last_stage() else None
        seq = broadcast_from_last_stage(seq, (num_microbatches * MBS,))
        result = {"seq_logp": seq}
        if tp == 1 and pp == 1:  # the head must equal Megatron's output layer (softcapped) + log_softmax
            logits = model[0](data[0]["tokens"], _positions(), None)[..., :VOCAB].float()
            ref = torch.log_softmax(logits, -1).gather(-1, data[0]["labels"].unsqueeze(-1)).squeeze(-1)
            result["megatron_seq_logp"] = sequence_logprobs(ref, data[0]["mask"]).detach()

        for m in model:
            m.zero_grad_buffer()
        out = run_schedule(model, data, forward_only=False, forward_step=_train_step)
        loss = torch.stack([o["loss"] for o in out]).sum() if ps.is_pipeline_last_stage() else None
        result["loss"] = broadcast_from_last_stage(loss, ())
        with params_as_grads(model):
            result["grads"] = gather_full(model)
        return result
    finally:
        destroy_distributed()
