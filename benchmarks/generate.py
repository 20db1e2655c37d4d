"""Generation speed of the rollout engines side by side, same model, same run: megatron-bond's native decode
loop, the colocated vLLM engine (through the same engine boundary as training), and transformers' generate.

    .venv/bin/python benchmarks/generate.py --engine native,hf --json
    .venv-vllm/bin/python benchmarks/generate.py --engine native,vllm,hf --batch 16,64 --samples-per-prompt 1,3 --json

Builds a small random Gemma 2 model in transformers (no download), converts it with the real converter,
loads it as the trainer does, then for every shape (batch × samples per prompt) times each engine drawing
exactly --new-tokens tokens per sample (no stop ids): greedy at n = 1, temperature 1 at n > 1 (J-BOND's
shape: n samples of each prompt). Median of --repeats, the engines rotated so that drift in the machine's
speed reaches all of them alike. One JSON line per engine and shape:
  tokens_per_s   generated tokens / seconds of the whole call (prefill included)
  prefill_s      the same call with one new token (about the prompts' forward pass)
  refit_s        seconds to give the engine the weights (native: none, it reads the trainer's chunks;
                 vllm: gathered from the shards and reloaded in place; hf: not an engine, null)
  ratio_vs_native  native's seconds / this engine's (> 1: faster than native)
  rows_equal_to_native  greedy only: the fraction of rows equal to native's (sampled rows of two engines
                 differ by construction)
The native and vLLM engines return each token's log-probs; transformers' generate returns tokens only.
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

ENGINES = ("native", "vllm", "hf")


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
    """(median seconds, warm-up output) of each fn, the repeats rotating through the fns."""
    outputs = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # no fn always follows the same one
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", default="native,hf", help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--batch", type=_ints, default=[16], help="prompts per call, comma-separated")
    p.add_argument("--samples-per-prompt", type=_ints, default=[1], help="comma-separated")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    engines = args.engine.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"--engine: {unknown[0]!r} is not one of {', '.join(ENGINES)}")

    from megatron_bond.config import ParallelConfig
    from megatron_bond.convert.convert import hf_to_megatron
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.rollout.engine import build_engine
    from megatron_bond.rollout.rollouts import Version
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.runtime import destroy_distributed, init_distributed

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_model = build_model(args, tmp / "hf")
        hf_to_megatron(tmp / "hf", tmp / "ckpt")
        all_prompts = torch.randint(2, args.vocab, (max(args.batch), args.prompt_len),
                                    generator=torch.Generator().manual_seed(0))
        cfg = read_checkpoint_config(tmp / "ckpt", ParallelConfig())
        init_distributed(cfg.parallel, seed=0)
        try:
            chunks = load_model_checkpoint(tmp / "ckpt", cfg)
            built, refit_s = {}, {}
            for name in engines:
                if name != "hf":
                    built[name] = build_engine(name, cfg, (), args.new_tokens, max(args.batch), hf_dir=tmp / "ckpt" / "hf")
                    started = time.perf_counter()
                    built[name].refit(chunks, Version("policy", 0))
                    refit_s[name] = time.perf_counter() - started

            def call(name: str, prompts: torch.Tensor, n: int, new_tokens: int):
                params = SamplingParams(greedy=True) if n == 1 else SamplingParams(temperature=1.0)
                if name == "hf":
                    with torch.no_grad():
                        out = hf_model.generate(prompts, do_sample=n > 1, num_return_sequences=n, top_k=None,
                                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                eos_token_id=None, pad_token_id=0)
                    return out[:, args.prompt_len:].tolist()
                engine = built[name]
                engine.max_new_tokens = new_tokens  # a benchmark's knob: the engines read it per call
                out = engine.sample("policy", prompts.tolist(), n, params, (0, "benchmark"), 0)
                return [r for rs in out.responses for r in rs]

            rows = []
            for batch in args.batch:
                for n in args.samples_per_prompt:
                    prompts = all_prompts[:batch]
                    fns = {name: (lambda name=name: call(name, prompts, n, args.new_tokens)) for name in engines}
                    median, outputs = timed_side_by_side(fns, args.repeats)
                    prefill, _ = timed_side_by_side({name: (lambda name=name: call(name, prompts, n, 1))
                                                     for name in engines}, args.repeats)
                    for name in engines:
                        assert all(len(r) == args.new_tokens for r in outputs[name]), name
                        same = (sum(a == b for a, b in zip(outputs[name], outputs["native"])) / len(outputs[name])
                                if n == 1 and "native" in outputs else None)
                        rows.append({
                            "engine": name, "batch": batch, "samples_per_prompt": n, "prompt_len": args.prompt_len,
                            "new_tokens": args.new_tokens, "hidden": args.hidden, "layers": args.layers,
                            "vocab": args.vocab, "threads": torch.get_num_threads(), "repeats": args.repeats,
                            "seconds": median[name], "tokens_per_s": batch * n * args.new_tokens / median[name],
                            "prefill_s": prefill[name], "refit_s": refit_s.get(name),
                            "ratio_vs_native": median["native"] / median[name] if "native" in median else None,
                            "rows_equal_to_native": same,
                        })
                        print(json.dumps(rows[-1]) if args.json else
                              f"{name:>6} batch {batch} n {n}: {rows[-1]['tokens_per_s']:.0f} tok/s, "
                              f"prefill {prefill[name]:.3f} s", flush=True)
        finally:
            destroy_distributed()


if __name__ == "__main__":
    main()
