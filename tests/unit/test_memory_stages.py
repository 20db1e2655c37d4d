"""The memory planner with uneven pipeline stages: each stage is planned with its own parameters,
layers and microbatches in flight, so moving layers off the fullest stage lowers the plan (a planner
that mixed the largest stage's parameters with the first stage's microbatches could only raise it)."""

import dataclasses

from megatron_bond.config import load_config
from megatron_bond.memory import Allocation, plan

ALLOC = Allocation(nodes=4, gpus_per_node=8)


def _plan(**parallel):
    cfg = load_config("recipes/jbond_gemma2_27b.yaml", [])
    return plan(dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, **parallel)), ALLOC)


def test_fewer_layers_on_the_fullest_stage_lower_the_plan():
    even = _plan()  # 46 layers as 23 + 23: stage 0 holds the embedding and 2 microbatches in flight
    assert "stage 0 of 2" in even.layout
    lighter = _plan(first_stage_layers=20)  # 20 + 26
    assert lighter.total < even.total
    # the most a stage can give: stage 1 (26 layers, one microbatch, the output head) becomes the fuller
    balanced = min((_plan(first_stage_layers=k) for k in range(14, 24)), key=lambda p: p.total)
    assert balanced.total <= lighter.total


def test_the_fullest_stage_is_planned_with_its_own_layers():
    """10 + 36 layers: stage 1 is the fullest, and its KV cache is 36 layers' (linear in layers)."""
    even, skewed = _plan(), _plan(first_stage_layers=10)
    assert "stage 1 of 2" in skewed.layout
    assert skewed.items["rollout KV cache"] * 23 == even.items["rollout KV cache"] * 36
