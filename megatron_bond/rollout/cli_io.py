"""`megatron-bond generate`: prompts JSONL in ({"tokens": [...]} or {"text": "..."}), rollouts out."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from megatron_bond.config import ConfigError, ParallelConfig
from megatron_bond.jsonl import check_token_ids, read_objects
from megatron_bond.rollout.sampling import SamplingParams


def load_tokenizer(ckpt: str | Path):
    """The checkpoint's SentencePiece tokenizer (hf/tokenizer.model), or None."""
    path = Path(ckpt) / "hf" / "tokenizer.model"
    if not path.is_file():
        return None
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(path))


def read_prompts(path: str | Path, tokenizer, bos_id: int | None, vocab_size: int) -> list[list[int]]:
    prompts = []
    for where, row in read_objects(path):
        if isinstance(row.get("tokens"), list):
            prompt = row["tokens"]
        elif isinstance(row.get("text"), str):
            if tokenizer is None:
                raise ConfigError(f"{where}: a text prompt needs hf/tokenizer.model in the checkpoint")
            prompt = ([bos_id] if bos_id is not None else []) + tokenizer.encode(row["text"])
        else:
            raise ConfigError(f"{where}: expected a non-empty 'tokens' list or a 'text' string")
        check_token_ids(prompt, vocab_size, where)
        prompts.append(prompt)
    return prompts


def generate_file(args) -> int:
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.rollout.generate import generate
    from megatron_bond.runtime import destroy_distributed, init_distributed
    from megatron_bond.runtime.data_parallel import map_over_data_parallel

    params = SamplingParams(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    cfg = read_checkpoint_config(args.ckpt, ParallelConfig(tp=args.tp, pp=args.pp))
    hf_config = json.loads((Path(args.ckpt) / "hf" / "config.json").read_text())
    tokenizer = load_tokenizer(args.ckpt)
    prompts = read_prompts(args.input, tokenizer, hf_config.get("bos_token_id"), cfg.model.vocab_size)
    eos = hf_config.get("eos_token_id")
    stop_ids = tuple(args.stop_id or ([] if eos is None else eos if isinstance(eos, list) else [eos]))
    init_distributed(cfg.parallel, seed=args.seed)
    try:
        chunks = load_model_checkpoint(args.ckpt, cfg)

        seeds = itertools.count(args.seed)  # each batch its own stream, reproducible from --seed

        def run(batch):
            out = generate(chunks, cfg, batch, args.max_new_tokens, params, next(seeds), stop_ids)
            return list(zip(out.responses, out.logprobs))

        results = map_over_data_parallel(prompts, run, args.batch_size)
        if torch.distributed.get_rank() == 0:
            with open(args.output, "w") as f:
                for prompt, (response, logprobs) in zip(prompts, results):
                    row = {"prompt_tokens": prompt, "tokens": response, "logprobs": logprobs}
                    if tokenizer is not None:
                        row["text"] = tokenizer.decode(response)
                    f.write(json.dumps(row) + "\n")
    finally:
        destroy_distributed()
    return len(prompts)
