"""Gemma core attention (per KV group, softcap, sliding window, queries at the end of a KV cache)
equals transformers' eager Gemma attention."""

import itertools

import pytest

from tests.harness import run_ranks

GROUPS = [1, 2, 4]  # MQA, GQA, MHA over 4 query heads
CAP_WINDOW = [(None, None), (5.0, None), (None, 4), (5.0, 4)]
CASES = [(g, cap, window, "float32") for g, (cap, window) in itertools.product(GROUPS, CAP_WINDOW)]
CASES += [(2, 5.0, 4, "bfloat16")]  # the dtype Gemma trains in: scores and softcap in bf16, softmax in fp32, as HF
TOL = {"float32": 1e-5, "bfloat16": 2e-2}  # bf16: the same ops as HF (equal bits here; a CPU may round apart)


@pytest.fixture(scope="module")
def diffs():
    return run_ranks("tests.integration.attention_bodies:compare", 1, {"cases": CASES}, timeout=120)[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "groups{}-cap{}-window{}-{}".format(*c))
def test_core_attention_matches_transformers(diffs, case):
    assert max(diffs[case].values()) <= TOL[case[3]], diffs[case]
