"""`megatron-bond <command>`: the user-facing entry point (under torchrun or srun for parallel runs)."""

from __future__ import annotations

import argparse
import json
import sys

from megatron_bond.config import ConfigError, load_config
from megatron_bond.runtime.distributed import DistributedSetupError


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`cmd parallel.tp=2` (no recipe) parses the override as the recipe: put it back."""
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        return None, [args.recipe, *args.overrides]
    return args.recipe, args.overrides


def _config(args: argparse.Namespace) -> int:
    cfg = load_config(*_recipe_and_overrides(args))
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from megatron_bond.bond.simulator import SequenceProblem, run_jbond

    problem = SequenceProblem.random(args.vocab, args.length, seed=args.seed)
    print(f"J-BOND on all {args.vocab}**{args.length} sequences (exact expectations), "
          f"beta={args.beta} gamma={args.gamma} eta={args.eta}", flush=True)
    history = run_jbond(problem, args.steps, args.lr, args.beta, args.gamma, args.eta,
                        log_every=max(1, args.steps // 10))
    if args.output:
        with open(args.output, "w") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(history)} rows to {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from megatron_bond.config import ParallelConfig
    from megatron_bond.scoring import score

    n = score(args.ckpt, ParallelConfig(tp=args.tp, pp=args.pp), args.input, args.output, args.batch_size)
    print(f"scored {n} sequences -> {args.output}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from megatron_bond.rollout.cli_io import generate_file

    n = generate_file(args)
    print(f"generated for {n} prompts -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-bond", description="BOND / J-BOND (Best-of-N Distillation) on megatron-core."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("config", help="validate a recipe with key=value overrides and print it resolved")
    p.add_argument("recipe", nargs="?", help="recipe YAML (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2")
    p.set_defaults(func=_config)

    p = sub.add_parser("simulate", help="J-BOND on an exact tiny sequence problem (no model, CPU, seconds)")
    p.add_argument("--vocab", type=int, default=4)
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=0.0)
    p.add_argument("--eta", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="JSONL file for the per-step history")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("score", help="per-token log-probs (or rewards) of token sequences, any TP/PP")
    p.add_argument("--ckpt", required=True, help="checkpoint directory (tools/convert_hf_to_megatron.py)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--input", required=True, help='JSONL lines {"tokens": [int, ...]}')
    p.add_argument("--output", required=True, help='JSONL lines {"logprobs": [...]} or {"reward": x}')
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_score)

    p = sub.add_parser("generate", help="sample continuations of prompts (KV cache, any TP/PP)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--input", required=True, help='JSONL lines {"tokens": [...]} or {"text": "..."}')
    p.add_argument("--output", required=True, help='JSONL lines {"prompt_tokens", "tokens", "logprobs"[, "text"]}')
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--stop-id", type=int, action="append", help="stop token id (repeatable); default: eos")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DistributedSetupError) as err:
        print(f"megatron-bond: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
