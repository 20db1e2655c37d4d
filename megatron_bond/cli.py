"""`megatron-bond <command>`: the user-facing entry point (under torchrun or srun for parallel runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_bond.config import ConfigError, ModelConfig, load_config
from megatron_bond.errors import RunError
from megatron_bond.runtime.distributed import DistributedSetupError, nccl_environment


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`cmd parallel.tp=2` (no recipe) parses the override as the recipe: put it back."""
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        return None, [args.recipe, *args.overrides]
    return args.recipe, args.overrides


def _config(args: argparse.Namespace) -> int:
    import torch

    from megatron_bond.resolve import resolve_present

    cfg = load_config(*_recipe_and_overrides(args))
    # train's checks before it builds a model (the checkpoints' architecture, the engine's layout), with
    # this machine's device deciding the training dtype as it would for train here.
    _, absent = resolve_present(cfg, on_gpu=torch.cuda.is_available())
    for key in absent:
        how = ("the architecture is checked when train reads it" if key == "policy.ckpt" and cfg.model == ModelConfig()
               else "checked with the recipe's model section")
        print(f"({key} {getattr(cfg, key.split('.')[0]).ckpt} not found here: {how})", file=sys.stderr)
    if args.get is None:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    value = cfg.to_dict()
    for part in args.get.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"config: --get {args.get}: no such key")
        value = value[part]
    print(json.dumps(value) if isinstance(value, (dict, list)) or value is None else value)
    return 0


# The simulator enumerates all V**L sequences and holds [V**L, V**L] quantile matrices (fp64).
SIMULATE_MAX_BYTES = 2**30


def _simulate(args: argparse.Namespace) -> int:
    from megatron_bond.bond.simulator import SequenceProblem, run_jbond

    if args.vocab < 2 or args.length < 1 or args.steps < 1:
        raise ConfigError("simulate: --vocab must be >= 2, --length and --steps >= 1")
    if not 0.0 <= args.beta <= 1.0 or not 0.0 < args.eta <= 1.0 or args.gamma < 0 or args.lr <= 0:
        raise ConfigError("simulate: --beta must lie in [0, 1], --eta in (0, 1], --gamma >= 0, --lr > 0")
    size = args.vocab**args.length
    need = 3 * 8 * size * size
    if need > SIMULATE_MAX_BYTES:
        raise ConfigError(f"simulate: {args.vocab}**{args.length} = {size} sequences need about "
                          f"{need / 2**30:.0f} GiB (pairwise quantiles); keep vocab**length <= "
                          f"{int((SIMULATE_MAX_BYTES / 24) ** 0.5)}")
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


def _train(args: argparse.Namespace) -> int:
    from megatron_bond.train.loop import train

    cfg = load_config(*_recipe_and_overrides(args))
    nccl_environment(cfg.rollout.engine)
    train(cfg)
    return 0


def _check_io(args: argparse.Namespace) -> None:
    """Before any model loads: the input exists, the output can be written, sizes are positive."""
    from pathlib import Path

    if args.tp < 1 or args.pp < 1 or args.batch_size < 1:
        raise ConfigError(f"--tp, --pp and --batch-size must be >= 1 (got {args.tp}, {args.pp}, {args.batch_size})")
    if not Path(args.input).is_file():
        raise ConfigError(f"--input {args.input}: no such file")
    if Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output} is a directory: give a file path (it is written when complete)")
    parent = Path(args.output).absolute().parent
    if not parent.is_dir():
        raise ConfigError(f"--output {args.output}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--output {args.output}: the directory {parent} is not writable")


def _score(args: argparse.Namespace) -> int:
    from megatron_bond.commands import parallel_from
    from megatron_bond.commands.score import score

    _check_io(args)
    nccl_environment("native")
    n = score(args.ckpt, parallel_from(args), args.input, args.output, args.batch_size, args.max_tokens_per_microbatch)
    if _rank() == 0:
        print(f"scored {n} sequences -> {args.output}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from megatron_bond.commands.generate import generate_file

    _check_io(args)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.greedy and (args.temperature, args.top_k, args.top_p) != (None, None, None):
        raise ConfigError("--greedy takes the argmax: it cannot be combined with --temperature, --top-k or --top-p")
    nccl_environment(args.engine)
    n = generate_file(args)
    if _rank() == 0:
        print(f"generated for {n} prompts -> {args.output}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help, except where there is none to show (required options, flags, None)."""

    def _get_help_string(self, action):
        # `is`, not `in`: 0 and 0.0 compare equal to False and are real defaults to show
        if action.required or action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _sub(sub, name: str, help: str):
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def _layout_args(p) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (tools/convert_hf_to_megatron.py, or a run's policy/)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (the checkpoint reshards on load)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument("--first-stage-layers", type=int,
                   help="layers of the first pipeline stage (uneven stages); default: an even split")
    p.add_argument("--last-stage-layers", type=int,
                   help="layers of the last pipeline stage (uneven stages); default: an even split")


def build_parser() -> argparse.ArgumentParser:
    from megatron_bond import __version__

    parser = argparse.ArgumentParser(
        prog="megatron-bond", description="BOND / J-BOND (Best-of-N Distillation) on megatron-core.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"megatron-bond {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _sub(sub, "config", "validate a recipe with key=value overrides and print it resolved")
    p.add_argument("recipe", nargs="?", help="recipe YAML (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.tp=2")
    p.add_argument("--get", metavar="KEY", help="print only this dotted key's value, e.g. parallel.tp (for scripts)")
    p.set_defaults(func=_config)

    p = _sub(sub, "train", "J-BOND / BOND / REINFORCE training (under torchrun or srun for several ranks)")
    p.add_argument("recipe", nargs="?", help="recipe YAML, e.g. recipes/tiny_cpu.yaml (defaults when omitted)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200 parallel.tp=2")
    p.set_defaults(func=_train)

    p = _sub(sub, "simulate", "J-BOND on an exact tiny sequence problem (no model, CPU, seconds)")
    p.add_argument("--vocab", type=int, default=4, help="tokens in the vocabulary")
    p.add_argument("--length", type=int, default=3, help="tokens per sequence (vocab**length sequences are enumerated)")
    p.add_argument("--steps", type=int, default=200, help="Adam steps on the exact expected loss")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    p.add_argument("--beta", type=float, default=0.5, help="weight of the backward-KL side, in [0, 1]")
    p.add_argument("--gamma", type=float, default=0.0, help="weight of the KL-to-anchor regulariser")
    p.add_argument("--eta", type=float, default=0.05, help="EMA rate of the anchor, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random rewards and reference policy")
    p.add_argument("--output", help="JSONL file for the per-step history (none: print only)")
    p.set_defaults(func=_simulate)

    p = _sub(sub, "score", "per-token log-probs (or rewards) of token sequences, any TP/PP")
    _layout_args(p)
    p.add_argument("--input", required=True, help='JSONL lines {"tokens": [int, ...]}')
    p.add_argument("--output", required=True, help='JSONL lines {"logprobs": [...]} or {"reward": x}, in input order')
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass and data-parallel rank")
    p.add_argument("--max-tokens-per-microbatch", type=int, default=None,
                   help="pack each forward pass's sequences into microbatches of at most this many tokens "
                        "(a Gemma checkpoint; default: right-padded)")
    p.set_defaults(func=_score)

    p = _sub(sub, "generate", "sample continuations of prompts (KV cache, any TP/PP)")
    _layout_args(p)
    p.add_argument("--input", required=True, help='JSONL lines {"tokens": [...]} or {"text": "..."}')
    p.add_argument("--output", required=True,
                   help='JSONL lines {"prompt_tokens", "tokens", "logprobs"[, "text"]}, in input order')
    p.add_argument("--greedy", action="store_true", help="argmax decoding (refuses --temperature, --top-k, --top-p)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0); default 1.0")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0: off); default 0")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]; default 1.0")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt at most (>= 1)")
    p.add_argument("--stop-id", type=int, action="append",
                   help="an extra stop token id (repeatable), beside the checkpoint's eos ids from hf/config.json "
                        "and hf/generation_config.json")
    p.add_argument("--seed", type=int, default=1234,
                   help="sampler seed (each batch derives its own from it and its first prompt's line)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call and data-parallel rank")
    p.add_argument("--engine", default="native", choices=["native", "vllm"],
                   help="what samples (rollout/engine.py): megatron-core's decode loop, or a colocated vLLM "
                        "engine (make setup-vllm; pipeline size 1)")
    p.set_defaults(func=_generate)
    return parser


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DistributedSetupError, RunError) as err:
        # Errors found before the process group exists are the same on every rank: say them once.
        import torch.distributed

        if _rank() == 0 or torch.distributed.is_initialized():
            prefix = f"[rank {_rank()}] " if _rank() else ""
            print(f"megatron-bond: {prefix}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a run's own handling starts (train: signals.py), or in a command
        print("megatron-bond: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `megatron-bond config ... | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
