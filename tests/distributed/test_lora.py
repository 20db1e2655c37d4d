"""LoRA adapters on megatron-core's linears at TP=2 and PP=2 against TP=1 and against the merged weights.

Bounds: tests/tolerances.py with the tiny GPT's depths (tests/distributed/bodies.py). An adapter adds one
matmul of r = 4 terms and one sum to a linear's output (at most two more chained sums, each of at most
TERMS terms), so the depths grow by 2 per adapted linear, 8 per layer (4 linears) forward and twice that
back: +32 / +64 for the 4-layer GPT of bodies.py, +16 for the trainer's 2-layer tiny recipe
(train_bodies.py, whose TERMS is 272).
What a sharding bug does is O(1) of a gradient's scale (a B shard paired with the wrong rows of W, an
A gradient not summed over TP ranks is half of it).
"""

import functools

import pytest
import torch

from tests.distributed import train_bodies
from tests.distributed.bodies import GRAD_DEPTH, LOSS_DEPTH, TERMS
from tests.harness import run_ranks
from tests.tolerances import assert_reorder_close

pytestmark = pytest.mark.distributed

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
LORA_LOSS_DEPTH, LORA_GRAD_DEPTH = LOSS_DEPTH + 32, GRAD_DEPTH + 64
TRAINER_TERMS, TRAINER_LOSS_DEPTH = train_bodies.TERMS, train_bodies.LOSS_DEPTH + 16


@functools.cache
def step(layout: str) -> list[dict]:
    tp, pp = LAYOUTS[layout]
    return run_ranks("tests.distributed.lora_bodies:lora_step", tp * pp, {"tp": tp, "pp": pp}, timeout=180)


def test_adapted_model_equals_merged_weights():
    (ref,) = step("tp1")
    assert any(v.abs().max() > 0 for k, v in ref["before"].items() if k.endswith("lora_b.weight"))  # B ≠ 0
    assert_reorder_close(ref["merged_loss"], ref["loss"], TERMS, LORA_LOSS_DEPTH, "merged loss")


def test_only_adapters_train():
    (ref,) = step("tp1")
    assert ref["ok"] and ref["trained"] and all(".lora_" in n for n in ref["trained"])
    for key, before in ref["before"].items():
        if ".lora_" in key:
            assert (ref["after"][key] != before).any(), key
            assert ref["grads"][key].abs().max() > 0, key
        else:  # the base's bytes are untouched and it gets no gradient
            assert torch.equal(ref["after"][key], before), key
            assert not ref["grads"][key].any(), key


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_adapters_match_tp1(layout):
    (ref,) = step("tp1")
    for rank in step(layout):  # every rank sees the same global values
        assert_reorder_close(rank["loss"], ref["loss"], TERMS, LORA_LOSS_DEPTH, "loss")
        assert rank["trained"] == ref["trained"] or layout == "pp2"  # a stage holds its own layers
        for key, grad in ref["grads"].items():
            assert_reorder_close(rank["grads"][key], grad, TERMS, LORA_GRAD_DEPTH, key)
        for key, before in ref["before"].items():
            if ".lora_" not in key:
                assert torch.equal(rank["after"][key], before), key


@functools.cache
def trainer(layout: str) -> dict:
    tp, pp = LAYOUTS[layout]
    return run_ranks("tests.distributed.lora_bodies:lora_trainer", tp * pp, {"tp": tp, "pp": pp}, timeout=240)[0]


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_lora_jbond_steps(layout):
    """Two J-BOND steps with η = 1: the base's bytes never change, the adapters do; the anchor (EMA of the
    factors) equals the policy exactly; π_ref (the shared base, adapters off) draws the samples of a plain
    model with the base's weights (same tokens; log-probs within the reordering bound of one forward)."""
    got = trainer(layout)
    assert all(row["update_ok"] for row in got["rows"])
    moved = [k for k in got["before"] if not torch.equal(got["after"][k], got["before"][k])]
    assert moved and all(".lora_" in k for k in moved)
    for key, value in got["after"].items():
        assert torch.equal(got["anchor"][key], value), key
    # Same weights (bit for bit, above), other buffers: BLAS may block differently by alignment (seen at PP=2:
    # 4.8e-7), so the log-probs agree within one forward's reordering bound and the tokens exactly.
    assert got["policy"][0] == got["anchor_samples"][0]
    for a, b in zip(got["policy"][1], got["anchor_samples"][1]):
        assert_reorder_close(a, b, TRAINER_TERMS, TRAINER_LOSS_DEPTH, "anchor log-prob")
    assert got["reference"][0] == got["base"][0]
    for a, b in zip(got["reference"][1], got["base"][1]):
        assert_reorder_close(a, b, TRAINER_TERMS, TRAINER_LOSS_DEPTH, "π_ref log-prob")
    assert got["policy"][1] != got["reference"][1]  # the adapters moved the policy off its base
