"""The mapping tables against the layer specs (issue: conversion broke where Transformer Engine is
installed). Each family's table names exactly the parameters of the local spec's model; and the names
TE's spec gives the two norms it fuses into linears are renamed onto the same checkpoint keys
(models/keys.py), so one table and one checkpoint serve both specs.

TE does not install without CUDA, so its names here are the ones megatron-core's TE spec defines
(TELayerNormColumnParallelLinear: weight and layer_norm_weight, for linear_qkv and linear_fc1);
tests/integration/test_te_spec.py (gpu marker) builds the real TE spec and checks parity with transformers on a GPU."""

import pytest
import torch

from megatron_bond.config import ModelConfig
from megatron_bond.convert.gemma import rules_for
from megatron_bond.models.keys import TE_TO_LOCAL, canonical_key
from tests.distributed.spec_bodies import FAMILIES
from tests.harness import run_ranks
from tests.tolerances import assert_reorder_close

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def keys():
    return run_ranks("tests.distributed.spec_bodies:keys_per_family", 1, {}, timeout=240)[0]


def _table(name: str) -> set[str]:
    family = name.removesuffix("_reward")
    m = ModelConfig(num_layers=2, reward_head=name.endswith("_reward"), **FAMILIES[family])
    return {mk for rule in rules_for(m) for mk, _ in rule.expand(m.num_layers)}


@pytest.mark.parametrize("name", [f + r for f in FAMILIES for r in ("", "_reward")])
def test_the_table_covers_exactly_the_local_models_parameters(keys, name):
    params, _ = keys[name]
    assert _table(name) == params


@pytest.mark.parametrize("family", FAMILIES)
def test_te_names_map_onto_the_local_checkpoint_keys(keys, family):
    """The TE spec's model has the local model's tensors except that the input and pre-MLP norms live
    in linear_qkv and linear_fc1: rename the local keys the way TE names them, and canonical_key must
    give back exactly the local spec's checkpoint keys."""
    _, sharded = keys[family]
    te_names = set()
    for key in sharded:
        for te, local in TE_TO_LOCAL.items():
            if key.endswith(local) and not key.endswith("final_layernorm.weight"):
                key = key[: -len(local)] + te
        te_names.add(key)
    assert te_names != sharded  # the two specs do name these tensors differently
    assert {canonical_key(k) for k in te_names} == sharded


def test_reward_head_and_final_norm_run_in_fp32_in_a_bf16_model():
    """bf16 keeps 8 significant bits: a bf16 score is off by up to 2^-9 of its size (~4e-3 at |r| = 2)
    and rewards tie. The scores must be the fp32 norm and head of the bf16 hidden states: the same
    arithmetic reordered, 32 terms (hidden) in 2 chained sums."""
    got = run_ranks("tests.distributed.spec_bodies:bf16_reward_scores", 1, {}, timeout=240)[0]
    assert got["x_dtype"] == torch.bfloat16 and got["norm_out_dtype"] == torch.float32
    assert got["scores"].dtype == torch.float32 and got["ref"].abs().max() > 0.5
    assert_reorder_close(got["scores"], got["ref"], 32, 2, "reward scores")
