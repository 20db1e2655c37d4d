"""Test bodies that run on every rank (started by tests.harness.run_ranks)."""

from __future__ import annotations


import torch

from megatron_bond.config import Config, ModelConfig, ParallelConfig
from megatron_bond.models.layout import gather_full, init_layout_invariant, params_as_grads
from megatron_bond.runtime import destroy_distributed, init_distributed

SEQ, MBS, SEED = 16, 2, 1234
LR = 1e-3
ADAM_EPS, WEIGHT_DECAY = 1e-8, 0.01  # megatron-core's OptimizerConfig defaults, spelled out for the bound
# Reordering bounds of tiny_config's model (tests/tolerances.py): 4 layers, hidden 32, ffn 64, vocab
# ≤ 128, batches of ≤ 128 tokens.
#   TERMS = 128       the longest sum: the vocabulary's normaliser, or a weight gradient's sum over tokens
#   LOSS_DEPTH = 40   chained sums to a log-prob or loss: 9 per layer (two norms, qkv, scores, softmax,
#                     context, projection, fc1, fc2) times 4, then final norm, logits, normaliser, mean
#   GRAD_DEPTH = 81   back through the same chain, plus the weight gradient's sum over tokens
TERMS, LOSS_DEPTH, GRAD_DEPTH = 128, 40, 81


def tiny_config(tp: int, pp: int, **model) -> Config:
    fields = dict(num_layers=4, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                  num_query_groups=2, vocab_size=128, max_seq_length=SEQ)
    return Config(
        parallel=ParallelConfig(tp=tp, pp=pp, micro_batch_size=MBS),
        model=ModelConfig(**{**fields, **model}),
    ).validate()


def batches(num_microbatches: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (num_microbatches, MBS, SEQ + 1), generator=gen)
    return [{"tokens": t[:, :-1], "labels": t[:, 1:]} for t in tokens]


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    positions = torch.arange(SEQ).expand(MBS, SEQ)
    out = model(batch["tokens"], positions, None, labels=batch["labels"])

    def loss_func(per_token_loss):
        loss = per_token_loss.float().mean()
        return loss, {"loss": loss.detach()}

    return out, loss_func


def run_schedule(model, data, forward_only: bool, forward_step=_forward_step) -> list[dict]:
    """Megatron's schedule for this layout (1F1B under PP); the last stage's per-microbatch dicts."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(data), model=model,
        num_microbatches=len(data), seq_length=SEQ, micro_batch_size=MBS, forward_only=forward_only,
    )


def _run_schedule(model, data, forward_only: bool) -> torch.Tensor:
    """Mean loss over microbatches, known on every rank (the last stage computes it)."""
    from megatron.core import parallel_state as ps

    out = run_schedule(model, data, forward_only)
    loss = torch.zeros(1)
    if ps.is_pipeline_last_stage():
        loss += torch.stack([o["loss"] for o in out]).mean()
    torch.distributed.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
    return loss


def ddp_model(cfg: Config) -> list:
    """Layout-invariant tiny GPT chunks wrapped in Megatron DDP, wired into the schedules' config."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads

    from megatron_bond.models.gpt import build_model

    chunks = build_model(cfg)
    init_layout_invariant(chunks, SEED)
    config = chunks[0].config
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True)
    model = [DistributedDataParallel(config, ddp_config, c) for c in chunks]
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model[0].no_sync
    return model


def adam_step(model, data, clip_grad: float):
    """One DDP + Adam step of ``model`` on ``data``: (optimizer, full params before, loss, full grads, ok, grad norm)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=LR, clip_grad=clip_grad, bf16=False, fp16=False,
                        adam_eps=ADAM_EPS, weight_decay=WEIGHT_DECAY),
        model,
    )
    before = gather_full(model)
    for m in model:
        m.zero_grad_buffer()
    optimizer.zero_grad()
    loss = _run_schedule(model, data, forward_only=False)
    with params_as_grads(model):
        grads = gather_full(model)
    ok, grad_norm, _ = optimizer.step()
    return optimizer, before, loss, grads, ok, grad_norm


def train_step(tp: int, pp: int, num_microbatches: int = 4, save_dir: str | None = None) -> dict:
    """One DDP + Adam step from a layout-invariant init: loss, full grads, full params after."""
    from megatron.core import dist_checkpointing

    cfg = tiny_config(tp, pp)
    init_distributed(cfg.parallel, seed=SEED)
    try:
        model = ddp_model(cfg)
        data = batches(num_microbatches, cfg.model.vocab_size)
        _, before, loss, grads, ok, grad_norm = adam_step(model, data, clip_grad=0.5)
        params = gather_full(model)
        if save_dir:
            __import__("os").makedirs(save_dir, exist_ok=True)
            dist_checkpointing.save(model[0].module.sharded_state_dict(), save_dir)
        after = _run_schedule(model, data, forward_only=True)
        return {"loss": loss.item(), "grads": grads, "params_before": before, "params": params, "ok": ok,
                "grad_norm": grad_norm, "loss_after": after.item()}
    finally:
        destroy_distributed()


def load_and_eval(tp: int, pp: int, ckpt_dir: str, num_microbatches: int = 4) -> dict:
    """Load a checkpoint written at another layout and report the loss and the full params."""
    from megatron.core import dist_checkpointing

    from megatron_bond.models.gpt import build_model

    cfg = tiny_config(tp, pp)
    init_distributed(cfg.parallel, seed=SEED + 1)  # a different init: the load must overwrite it
    try:
        chunks = build_model(cfg)
        state = dist_checkpointing.load(chunks[0].sharded_state_dict(), ckpt_dir)
        chunks[0].load_state_dict(state)
        loss = _run_schedule(chunks, batches(num_microbatches, cfg.model.vocab_size), forward_only=True)
        return {"loss": loss.item(), "params": gather_full(chunks)}
    finally:
        destroy_distributed()


def expect_setup_error(tp: int, pp: int) -> str:
    """Return the one-line error init_distributed raises for a bad layout."""
    from megatron_bond.runtime import DistributedSetupError

    try:
        init_distributed(ParallelConfig(tp=tp, pp=pp), seed=SEED)
    except DistributedSetupError as err:
        return str(err)
    finally:
        destroy_distributed()
    raise AssertionError("init_distributed accepted a bad layout")


def hang() -> None:
    """Rank 0 waits in a collective that rank 1 never joins: the harness must time out."""
    init_distributed(ParallelConfig(), seed=SEED)
    if torch.distributed.get_rank() == 0:
        torch.distributed.barrier()
    else:
        import time

        time.sleep(600)


def fail_on_rank(rank: int) -> None:
    if int(__import__("os").environ["RANK"]) == rank:
        1 / 0
