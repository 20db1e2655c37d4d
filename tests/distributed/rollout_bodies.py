"""The vocab-parallel sampler on real gloo ranks: each rank holds half of the logits' vocabulary."""

from __future__ import annotations

import torch

from megatron_bond.rollout.sampling import SamplingParams, Shard, sample


def draws(params: dict, rows: int, vocab_size: int, width: int, seed: int) -> dict:
    """Rows copies of one logit vector, drawn once split over the ranks and once whole on each rank."""
    torch.distributed.init_process_group("gloo")
    try:
        rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        logits = (torch.randn(width, generator=torch.Generator().manual_seed(0)) * 2).expand(rows, width)
        p = SamplingParams(**params)
        part = width // size
        split = sample(logits[:, rank * part : (rank + 1) * part].contiguous(), p, seed, 3,
                       Shard(rank * part, vocab_size, torch.distributed.group.WORLD))
        whole = sample(logits, p, seed, 3, Shard(0, vocab_size))
        return {"logits": logits[0], "split": split, "whole": whole}
    finally:
        torch.distributed.destroy_process_group()


def ragged_greedy(tp: int, lengths: list[int], max_new_tokens: int) -> dict:
    """Greedy rollouts of the tiny gpt model (megatron-core's own attention) from prompts of different
    lengths in one left-padded batch, and from each prompt alone (no padding)."""
    from megatron_bond.models.gpt import build_model
    from megatron_bond.models.layout import init_layout_invariant
    from megatron_bond.rollout.generate import generate
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.runtime import destroy_distributed, init_distributed
    from tests.distributed.bodies import SEED, tiny_config

    cfg = tiny_config(tp, 1, max_seq_length=32)
    init_distributed(cfg.parallel, seed=SEED)
    try:
        chunks = build_model(cfg)
        init_layout_invariant(chunks, SEED)
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(1, cfg.model.vocab_size, (n,), generator=gen).tolist() for n in lengths]
        greedy = SamplingParams(greedy=True)
        batch = generate(chunks, cfg, prompts, max_new_tokens, greedy, 0)
        alone = [generate(chunks, cfg, [p], max_new_tokens, greedy, 0) for p in prompts]
        return {"batch": (batch.responses, batch.logprobs),
                "alone": ([a.responses[0] for a in alone], [a.logprobs[0] for a in alone])}
    finally:
        destroy_distributed()
