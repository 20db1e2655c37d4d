"""Rank bodies for conversion parity: score a converted checkpoint at a given layout."""

from __future__ import annotations

import os


def cli(argv: list[str]) -> int:
    from megatron_bond.cli import main

    return main(argv)


def score_checkpoint(ckpt: str, tp: int, pp: int, rows: list[list[int]], out: str, extra: tuple = ()) -> list:
    """Run `megatron-bond score` (the CLI entry, ``extra`` arguments added) on these ranks; rank 0 returns
    the parsed output."""
    import json

    from megatron_bond.cli import main

    inp = f"{out}.in.jsonl"
    if os.environ["RANK"] == "0":
        with open(inp, "w") as f:
            for r in rows:
                f.write(json.dumps({"tokens": r}) + "\n")
    _wait_for(inp)
    code = main(["score", "--ckpt", ckpt, "--tp", str(tp), "--pp", str(pp), "--input", inp,
                 "--output", out, "--batch-size", "3", *extra])
    assert code == 0
    if os.environ["RANK"] != "0":
        return []
    return [json.loads(line) for line in open(out)]


def _wait_for(path: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.05)


def resave_at_layout(ckpt: str, tp: int, pp: int, out: str, stages: dict | None = None) -> None:
    """Load a checkpoint at this layout and save it again, as training at that layout would."""
    import shutil

    from megatron_bond.models.checkpoint import save_model_checkpoint

    def work(chunks, cfg):
        save_model_checkpoint(chunks, cfg, out)
        if os.environ["RANK"] == "0":
            shutil.copytree(f"{ckpt}/hf", f"{out}/hf")

    _at_layout(tp, pp, [ckpt], work, stages)


def _at_layout(tp: int, pp: int, ckpts: list[str], work, stages: dict | None = None) -> list:
    """Initialise the layout once (``stages``: first_stage_layers / last_stage_layers, for uneven
    stages), then ``work(chunks, cfg)`` for each checkpoint."""
    from megatron_bond.config import ParallelConfig
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.runtime import destroy_distributed, init_distributed

    parallel = ParallelConfig(tp=tp, pp=pp, **(stages or {}))
    init_distributed(parallel, seed=0)
    try:
        out = []
        for ckpt in ckpts:
            cfg = read_checkpoint_config(ckpt, parallel)
            out.append(work(load_model_checkpoint(ckpt, cfg), cfg))
        return out
    finally:
        destroy_distributed()


def score_many(ckpts: list[str], tp: int, pp: int, rows: list[list[int]], stages: dict | None = None) -> list:
    from megatron_bond.commands.score import score_rows

    return _at_layout(tp, pp, ckpts, lambda chunks, cfg: score_rows(chunks, cfg, rows, batch_size=3), stages)


def generate_many(ckpts: list[str], tp: int, pp: int, prompts: list[list[int]], max_new_tokens: int,
                  sampling: dict, seed: int = 0, stop_ids: tuple = (), repeat: bool = False,
                  stages: dict | None = None, fork: int = 0) -> list[dict]:
    """Rollouts of each checkpoint at this layout, plus `score`'s log-probs of the same tokens; with
    ``fork``, also that many samples of each prompt from one prefill, and from the prompts repeated."""
    from megatron_bond.rollout.generate import generate
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.commands.score import score_rows

    def work(chunks, cfg):
        params = SamplingParams(**sampling)
        out = generate(chunks, cfg, prompts, max_new_tokens, params, seed, stop_ids)
        again = generate(chunks, cfg, prompts, max_new_tokens, params, seed, stop_ids) if repeat else None
        full = [p + r for p, r in zip(out.prompts, out.responses)]
        scored = score_rows(chunks, cfg, full, batch_size=4)
        forked = {}
        if fork:
            one = generate(chunks, cfg, prompts, max_new_tokens, params, seed, stop_ids, n=fork)
            many = generate(chunks, cfg, [p for p in prompts for _ in range(fork)], max_new_tokens, params, seed, stop_ids)
            forked = {"forked": (one.responses, one.logprobs), "repeated": (many.responses, many.logprobs)}
        return {"responses": out.responses, "logprobs": out.logprobs, **forked,
                "again": again.responses if again else None,
                "scored": [s[len(p) - 1:] for s, p in zip(scored, out.prompts)]}

    return _at_layout(tp, pp, ckpts, work, stages)


def extra_state_checkpoints(ckpt: str, out: str, rows: list[list[int]]) -> dict:
    """A model whose core attention carries extra state as Transformer Engine's ``DotProductAttention``
    does (a uint8 tensor of pickled FP8 metadata in its state dict, which a strict ``load_state_dict``
    asks for, and none in its sharded state dict) loads a converted checkpoint, saves one, and a plain
    model loads that one: the scores of both."""
    import pickle

    import torch
    from torch.distributed.checkpoint import FileSystemReader

    from megatron_bond.commands.score import score_rows
    from megatron_bond.config import ParallelConfig
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config, save_model_checkpoint
    from megatron_bond.models.gemma_layers import GemmaCoreAttention
    from megatron_bond.runtime import destroy_distributed, init_distributed

    given = []

    def get_extra_state(self):
        return torch.frombuffer(bytearray(pickle.dumps({"amax_history": [0.0]})), dtype=torch.uint8)

    def set_extra_state(self, state):
        given.append(pickle.loads(state.numpy().tobytes()))

    parallel = ParallelConfig()
    init_distributed(parallel, seed=0)
    try:
        cfg = read_checkpoint_config(ckpt, parallel)
        GemmaCoreAttention.get_extra_state, GemmaCoreAttention.set_extra_state = get_extra_state, set_extra_state
        try:
            extra = load_model_checkpoint(ckpt, cfg)
            asked = [k for k in extra[0].state_dict() if k.endswith("core_attention._extra_state")]
            scores_extra = score_rows(extra, cfg, rows, batch_size=3)
            save_model_checkpoint(extra, cfg, out)
        finally:
            del GemmaCoreAttention.get_extra_state, GemmaCoreAttention.set_extra_state
        scores_plain = score_rows(load_model_checkpoint(out, cfg), cfg, rows, batch_size=3)
        saved = list(FileSystemReader(f"{out}/model").read_metadata().state_dict_metadata)
        return {"asked": asked, "given": given, "scores_extra": scores_extra, "scores_plain": scores_plain,
                "saved_extra": [k for k in saved if "_extra_state" in k]}
    finally:
        destroy_distributed()
