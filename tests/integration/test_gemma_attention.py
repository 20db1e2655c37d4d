"""Gemma core attention (per KV group, softcap, sliding window, queries at the end of a KV cache)
equals transformers' eager Gemma attention, and serves megatron-core's THD-packed documents."""

import itertools

import pytest

from tests.harness import run_ranks

GROUPS = [1, 2, 4]  # MQA, GQA, MHA over 4 query heads
CAP_WINDOW = [(None, None), (5.0, None), (None, 4), (5.0, 4)]
CASES = [(g, cap, window, "float32", "auto") for g, (cap, window) in itertools.product(GROUPS, CAP_WINDOW)]
CASES += [(2, 5.0, 4, "float32", impl) for impl in ("eager", "chunked")]  # model.attention_impl, forced
CASES += [(2, 5.0, 4, "bfloat16", impl) for impl in ("auto", "eager")]  # the dtype Gemma trains in: scores and softcap in bf16, softmax in fp32, as HF
# fp32: the bound of attention_bodies.fp32_bound for this case's inputs (derived there).
# bf16 has no useful worst-case bound: one ulp of a score near 20 is 0.125, which moves a probability by
# 12 %. Both sides run the same bf16 ops in the same order (as HF: scores and softcap in bf16, softmax
# in fp32) and agree to the bit on this machine; 2e-2 allows a kernel on another CPU to round a few
# outputs of |out| ≤ 10 one bf16 ulp apart, while a wrong mask, window or softcap moves them by O(1).
BF16_TOL = 2e-2


@pytest.fixture(scope="module")
def diffs():
    return run_ranks("tests.integration.attention_bodies:compare", 1, {"cases": CASES}, timeout=120)[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "groups{}-cap{}-window{}-{}-{}".format(*c))
def test_core_attention_matches_transformers(diffs, case):
    found = diffs[case]
    bound = found.pop("bound") if case[3] == "float32" else BF16_TOL
    assert max(found.values()) <= bound, (found, bound)


PACKED = [(None, None, "auto"), (5.0, 4, "auto"), (5.0, 4, "chunked")]


@pytest.fixture(scope="module")
def packed():
    return run_ranks("tests.integration.attention_bodies:packed", 1, {"cases": PACKED}, timeout=120)[0]


@pytest.mark.parametrize("case", PACKED, ids=lambda c: "cap{}-window{}-{}".format(*c))
def test_packed_documents_attend_alone(packed, case):
    """megatron-core's THD call (query [t, heads, dim], PackedSeqParams) returns [t, 1, heads·dim], each
    document's rows equal to the layer on that document alone (alone, "auto" may take SDPA): the fp32
    bound of attention_bodies.fp32_bound, and for gradients that bound times the SEQ queries a gradient
    entry sums over and their weights' size (measured: 3e-6 and 7e-6; a leak between documents: O(1))."""
    found = packed[case]
    assert found["shape"] == [11, 1, 32]
    assert found["out"] <= found["bound"] and found["grads"] <= found["grad_bound"], found
