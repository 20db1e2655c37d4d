"""The `score` and `generate` commands of `megatron-bond` (cli.py parses, these run): the CLI layer, on
top of the library (models/, rollout/, runtime/), which never imports it."""

from __future__ import annotations

import argparse


def parallel_from(args: argparse.Namespace):
    """The layout options of `score` and `generate` (--tp, --pp, uneven stages) as a ParallelConfig."""
    from megatron_bond.config import ParallelConfig

    return ParallelConfig(tp=args.tp, pp=args.pp, first_stage_layers=args.first_stage_layers,
                          last_stage_layers=args.last_stage_layers)
