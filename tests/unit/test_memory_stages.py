"""The memory planner with uneven pipeline stages: each stage is planned with its own parameters,
layers and microbatches in flight, so moving layers off the fullest stage lowers the plan (a planner
that mixed the largest stage's parameters with the first stage's microbatches could only raise it)."""

import dataclasses

from megatron_bond.config import load_config
from megatron_bond.memory import Allocation, plan
from megatron_bond.resolve import resolve_config

ALLOC = Allocation(nodes=4, gpus_per_node=8)


def _plan(*overrides, **parallel):
    cfg = resolve_config(load_config("recipes/jbond_gemma2_27b.yaml", ["policy.ckpt=null", "reward.ckpt=null", *overrides]),
                         on_gpu=True)
    return plan(dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, **parallel)), ALLOC)


def test_fewer_layers_on_the_fullest_stage_lower_the_plan():
    """46 layers: the stage with more layers is the fuller one, and moving layers off it lowers the plan
    down to the balance point (23 + 23 here: stage 0 holds the embedding and more microbatches in flight,
    stage 1 the output layer's copy of the tied embedding)."""
    skewed_first, skewed_last = _plan(first_stage_layers=30), _plan(first_stage_layers=16)
    assert "stage 0 of 2" in skewed_first.layout and "stage 1 of 2" in skewed_last.layout
    assert _plan(first_stage_layers=26).total < skewed_first.total
    assert _plan(first_stage_layers=20).total < skewed_last.total
    even = _plan()
    assert even.total <= min(_plan(first_stage_layers=k).total for k in (22, 24))


def test_the_fullest_stage_is_planned_with_its_own_layers():
    """10 + 36 layers: stage 1 is the fullest, and its KV cache is 36 layers' (linear in layers)."""
    even, skewed = _plan(), _plan(first_stage_layers=10)
    assert "stage 1 of 2" in skewed.layout
    kv = next(k for k in even.phases["rollout"] if k.startswith("KV cache"))
    assert skewed.phases["rollout"][kv] * 23 == even.phases["rollout"][kv] * 36


def test_every_phase_is_planned_and_the_verdict_is_on_the_largest():
    from megatron_bond.phases import PHASES

    pl = _plan("rollout.max_kv_tokens=null")  # no KV budget: evaluation holds all its samples at once
    assert tuple(pl.phases) == PHASES
    assert pl.total == max(pl.phase_total(ph) for ph in PHASES) == pl.phase_total(pl.peak_phase)
    # evaluation generates k reference samples per prompt: its KV cache is k / 2 times the rollout's (J-BOND: 2)
    cfg = load_config("recipes/jbond_gemma2_27b.yaml", [])
    kv_eval = next(v for k, v in pl.phases["eval"].items() if k.startswith("KV cache"))
    kv_roll = next(v for k, v in pl.phases["rollout"].items() if k.startswith("KV cache"))
    assert kv_eval * 2 == kv_roll * cfg.train.eval_ref_samples


def test_the_training_dtype_is_planned_not_the_checkpoints():
    """fp32 training holds twice the bytes of bf16 weights (and no separate masters)."""
    bf16 = _plan()
    cfg = resolve_config(load_config("recipes/jbond_gemma2_27b.yaml", ["policy.ckpt=null", "reward.ckpt=null",
                                                                       "policy.dtype=float32"]), on_gpu=True)
    fp32 = plan(cfg, ALLOC)
    assert fp32.resident["policy weights"] == 2 * bf16.resident["policy weights"]
    assert fp32.total > bf16.total
