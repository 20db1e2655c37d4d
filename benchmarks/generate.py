"""Generation speed: megatron-bond's KV-cache sampler against transformers' generate, same model, same run.

    python benchmarks/generate.py --batch 16 --prompt-len 64 --new-tokens 128 --json
    python benchmarks/generate.py --batch 64 --samples-per-prompt 3 --json    # 3 samples a prompt, sampled

Builds a small random Gemma 2 model in transformers (no download), converts it with the real converter,
then times greedy generation of exactly --new-tokens tokens per row (no stop ids), median of --repeats
alternating between the runs: this sampler (tokens and their log-probs), transformers' generate (tokens
only: the headline ratio), and generate asked for logits with the log-probs taken from them (the same
output as ours). One JSON line: times, tokens/s, both ratios (> 1: ours is faster), and the fraction of
rows whose greedy continuation equals transformers'.

With --samples-per-prompt n > 1 (sampling at temperature 1): this sampler prefilling each prompt once
and forking its cache into n rows, against the same sampler on the prompts repeated n times (as before
the fork: ``fork_speedup``), and transformers' generate with num_return_sequences = n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_model(args, out_dir: Path):
    import transformers

    config = transformers.Gemma2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
        head_dim=args.hidden // 8, max_position_embeddings=args.prompt_len + args.new_tokens,
        sliding_window=args.prompt_len, torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    model.save_pretrained(out_dir)
    return model


def timed_side_by_side(fns: dict, repeats: int) -> tuple[dict, dict]:
    """(median seconds, warm-up output) of each fn. The repeats rotate through the fns so that drift in
    the machine's speed (a shared CPU) reaches all of them alike."""
    outputs = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # no fn always follows the same one
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from megatron_bond.config import ParallelConfig
    from megatron_bond.convert.convert import hf_to_megatron
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.rollout.generate import generate
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.runtime import destroy_distributed, init_distributed

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_model = build_model(args, tmp / "hf")
        hf_to_megatron(tmp / "hf", tmp / "ckpt")
        prompts = torch.randint(2, args.vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))

        n = args.samples_per_prompt
        params = SamplingParams(greedy=True) if n == 1 else SamplingParams(temperature=1.0)

        def run_hf(logprobs: bool):
            """Tokens [b·n, new]; with ``logprobs`` also their log-probs, the sampler's full output."""
            with torch.no_grad():
                out = hf_model.generate(prompts, do_sample=n > 1, num_return_sequences=n, top_k=None,
                                        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                        eos_token_id=None, pad_token_id=0, output_logits=logprobs,
                                        return_dict_in_generate=True)
                tokens = out.sequences[:, args.prompt_len:]
                if logprobs:
                    logp = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)
                    logp.gather(-1, tokens.unsqueeze(-1))
                return tokens

        cfg = read_checkpoint_config(tmp / "ckpt", ParallelConfig())
        init_distributed(cfg.parallel, seed=0)
        try:
            chunks = load_model_checkpoint(tmp / "ckpt", cfg)
            rows = prompts.tolist()
            fns = {"hf": lambda: run_hf(False), "hf_logprobs": lambda: run_hf(True),
                   "ours": lambda: generate(chunks, cfg, rows, args.new_tokens, params, 0, n=n)}
            if n > 1:
                repeated = [r for r in rows for _ in range(n)]
                fns["ours_repeated"] = lambda: generate(chunks, cfg, repeated, args.new_tokens, params, 0)
            median, outputs = timed_side_by_side(fns, args.repeats)
        finally:
            destroy_distributed()

    tokens = args.batch * n * args.new_tokens
    same = sum(a == b for a, b in zip(outputs["ours"].responses, outputs["hf"].tolist())) / (args.batch * n)
    row = {
        "batch": args.batch, "samples_per_prompt": n, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "ours_s": median["ours"], "hf_s": median["hf"],
        "hf_logprobs_s": median["hf_logprobs"],
        "ours_tokens_per_s": tokens / median["ours"], "hf_tokens_per_s": tokens / median["hf"],
        "ratio": median["hf"] / median["ours"],
        "ratio_vs_hf_with_logprobs": median["hf_logprobs"] / median["ours"],
        # greedy only: sampled rows of two libraries differ by construction
        "rows_equal_to_hf": same if n == 1 else None,
        **({"ours_repeated_s": median["ours_repeated"], "fork_speedup": median["ours_repeated"] / median["ours"]}
           if n > 1 else {}),
    }
    if args.json:
        print(json.dumps(row))
    else:
        print(f"megatron-bond {row['ours_tokens_per_s']:.0f} tok/s, transformers {row['hf_tokens_per_s']:.0f} tok/s, "
              f"ratio {row['ratio']:.2f}")


if __name__ == "__main__":
    main()
