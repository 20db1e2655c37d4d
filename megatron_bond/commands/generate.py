"""`megatron-bond generate`: prompts JSONL in ({"tokens": [...]} or {"text": "..."}), rollouts out."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_bond.commands import parallel_from
from megatron_bond.config import ConfigError
from megatron_bond.jsonl import check_token_ids, read_objects, write_jsonl
from megatron_bond.models.tokenizer import TextSide, load_text_side
from megatron_bond.rollout.generate import check_context
from megatron_bond.rollout.sampling import SamplingParams


def read_prompts(path: str | Path, text: TextSide, vocab_size: int) -> list[list[int]]:
    prompts = []
    for where, row in read_objects(path):
        if isinstance(row.get("tokens"), list):
            prompt = row["tokens"]
        elif isinstance(row.get("text"), str):
            (prompt,) = text.encode([row["text"]], where)
        else:
            raise ConfigError(f"{where}: expected a non-empty 'tokens' list or a 'text' string")
        check_token_ids(prompt, vocab_size, where)
        prompts.append(prompt)
    return prompts


def generate_file(args) -> int:
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.rollout.engine import build_engine
    from megatron_bond.rollout.rollouts import Version
    from megatron_bond.runtime import destroy_distributed, init_distributed
    from megatron_bond.runtime.batch import map_over_data_parallel

    params = SamplingParams(greedy=args.greedy, temperature=1.0 if args.temperature is None else args.temperature,
                            top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p)
    cfg = read_checkpoint_config(args.ckpt, parallel_from(args))
    text = load_text_side(args.ckpt)  # no hf/ files for a model trained from scratch: token ids only
    prompts = read_prompts(args.input, text, cfg.model.vocab_size)
    stop_ids = text.stop_ids(extra=tuple(args.stop_id or ()))
    bad = [s for s in stop_ids if not 0 <= s < cfg.model.vocab_size]
    if bad:
        raise ConfigError(f"--stop-id {bad[0]} is outside the vocabulary [0, {cfg.model.vocab_size})")
    for i, prompt in enumerate(prompts):
        check_context(len(prompt), args.max_new_tokens, cfg.model.max_seq_length, f"{args.input}: prompt {i + 1}")
    init_distributed(cfg.parallel, seed=args.seed)
    try:
        engine = build_engine(args.engine, cfg, stop_ids, args.max_new_tokens, args.batch_size,
                              hf_dir=Path(args.ckpt) / "hf")
        version = Version("policy", 0)  # the checkpoint's weights, the only ones this command samples
        engine.refit(load_model_checkpoint(args.ckpt, cfg), version)

        def run(batch):  # [(line index, prompt)]: each batch's seed from --seed and its first line
            first = batch[0][0] if batch else len(prompts)  # an empty share samples nothing
            out = engine.sample("policy", [p for _, p in batch], 1, params, (args.seed, "generate"), first)
            return [(rs[0], lps[0]) for rs, lps in zip(out.require(version).responses, out.logprobs)]

        def rows():
            results = map_over_data_parallel(list(enumerate(prompts)), run, args.batch_size)
            for prompt, (response, logprobs) in zip(prompts, results):
                row = {"prompt_tokens": prompt, "tokens": response, "logprobs": logprobs}
                if text.tokenizer is not None:
                    row["text"] = text.decode(response)
                yield row

        write_jsonl(args.output, rows(), len(prompts), "generate", writer=torch.distributed.get_rank() == 0)
    finally:
        destroy_distributed()
    return len(prompts)
