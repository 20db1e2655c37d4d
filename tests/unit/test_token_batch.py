"""The token batch (megatron_bond/runtime/tokens.py) against brute force: every row lands once, whole, in
one pack under the budget; positions restart per document; labels and weights are the row's own; the
unpacked outputs are the rows'; and a per-document causal computation over a pack equals it row by row."""

import random

import pytest
import torch

from megatron_bond.runtime.tokens import assign, pack_rows, padded_microbatches, unpack
from megatron_bond.train.weights import token_weights


def _rows(seed: int, n: int = 23, longest: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 200) for _ in range(rng.randint(2, longest))] for _ in range(n)]


def test_first_fit_decreasing_against_brute_force():
    """Each index once; no pack over the budget; first-fit: no later pack's document fits an earlier
    pack's room at the moment it was placed (checked by replaying the placement)."""
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 40))]
        budget = rng.randint(30, 90)
        packs = assign(lengths, budget)
        assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in p) <= budget for p in packs)
        where = {i: j for j, p in enumerate(packs) for i in p}
        room = [budget] * len(packs)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            assert all(room[j] < lengths[i] for j in range(where[i])), "an earlier pack had room"
            room[where[i]] -= lengths[i]
        # Two of its packs together would overflow: any pair fitting in one means a wasted pack.
        assert all(sum(lengths[i] for i in packs[a] + packs[b]) > budget
                   for a in range(len(packs)) for b in range(a + 1, len(packs)))


def test_a_row_longer_than_the_budget_is_refused():
    with pytest.raises(ValueError, match="a row of 9 positions exceeds the token budget 8"):
        assign([3, 9], 8)


@pytest.mark.parametrize("multiple_of, same_size", [(1, False), (4, False), (1, True)])
def test_packed_layout_is_each_rows_own(multiple_of, same_size):
    rows = _rows(1)
    prompt_lens = [max(1, len(r) // 3) for r in rows]
    coef = torch.randn(len(rows))
    weights = token_weights(coef, prompt_lens, [len(r) - p for r, p in zip(rows, prompt_lens)],
                            max(map(len, rows)) - 1)
    packs = pack_rows(rows, 64, pad_id=0, weights=weights, multiple_of=multiple_of, same_size=same_size)
    assert sorted(i for p in packs for i in p.rows) == list(range(len(rows)))
    sizes = {p.size for p in packs}
    assert all(s % multiple_of == 0 for s in sizes) and (len(sizes) == 1 or not same_size)
    for p in packs:
        bounds = p.cu_seqlens.tolist()
        assert p.cu_seqlens.dtype == torch.int32 and bounds[0] == 0 and bounds[-1] == p.size
        assert p.max_seqlen == max(b - a for a, b in zip(bounds, bounds[1:]))
        assert sum(len(rows[i]) - 1 for i in p.rows) <= 64
        for i, (a, b) in zip(p.rows, zip(bounds, bounds[1:])):
            assert p.tokens[0, a:b].tolist() == rows[i][:-1]
            assert p.labels[0, a:b].tolist() == rows[i][1:]
            assert p.positions[0, a:b].tolist() == list(range(b - a))
            assert torch.equal(p.weights[0, a:b], weights[i, : b - a])
        tail = bounds[len(p.rows)]  # the padding document: weight 0, positions from 0
        assert (p.weights[0, tail:] == 0).all() and p.positions[0, tail:].tolist() == list(range(p.size - tail))
    # The weights laid out are all of them: nothing dropped, nothing added.
    assert torch.isclose(sum(p.weights.sum() for p in packs), weights.sum(), rtol=1e-6)


def test_reward_layout_feeds_whole_rows():
    rows = _rows(2)
    packs = pack_rows(rows, 64, labels=False)
    assert all(p.labels is None and p.weights is None for p in packs)
    got = unpack(packs, [p.tokens for p in packs], len(rows))
    assert [g.tolist() for g in got] == rows


def test_unpacked_per_document_computation_equals_row_by_row():
    """A causal, per-document computation (a prefix sum restarted at each boundary, the shape of what
    attention with cu_seqlens does) over the packs, unpacked, is the same as on each row alone: exact,
    the integers are small."""
    rows = _rows(3)
    packs = pack_rows(rows, 50, pad_id=0, multiple_of=4)
    outputs = []
    for p in packs:
        x = p.tokens[0].clone()
        out = torch.cat([torch.cumsum(part, 0) for part in torch.split(x, torch.diff(p.cu_seqlens).tolist())])
        outputs.append(out.unsqueeze(0))
    got = unpack(packs, outputs, len(rows))
    assert [g.tolist() for g in got] == [torch.cumsum(torch.tensor(r[:-1]), 0).tolist() for r in rows]


def test_packed_seq_params_for_megatron():
    p = pack_rows([[1, 2, 3], [4, 5, 6, 7]], 16, multiple_of=4)[0]
    params = p.packed_seq_params()
    assert params.qkv_format == "thd" and params.cu_seqlens_q.tolist() == [0, 2, 5, 8]
    assert params.cu_seqlens_kv is params.cu_seqlens_q and params.max_seqlen_q == params.max_seqlen_kv == 3


def test_padded_microbatches_match_the_right_padded_layout():
    rows = _rows(4, n=8)
    longest = max(map(len, rows))
    weights = torch.arange(8 * (longest - 1), dtype=torch.float32).view(8, longest - 1)
    micro = padded_microbatches(rows, 4, pad_id=0, weights=weights, multiple_of=2)
    width = longest + (-(longest - 1) % 2)
    assert len(micro) == 2 and all(m.cu_seqlens is None and m.tokens.shape == (4, width - 1) for m in micro)
    for j, m in enumerate(micro):
        for k, i in enumerate(m.rows):
            assert i == 4 * j + k
            row = rows[i] + [0] * (width - len(rows[i]))
            assert m.tokens[k].tolist() == row[:-1] and m.labels[k].tolist() == row[1:]
            assert torch.equal(m.weights[k, : longest - 1], weights[i]) and (m.weights[k, longest - 1 :] == 0).all()


def test_score_refuses_rows_past_its_token_budget(tmp_path):
    """`megatron-bond score --max-tokens-per-microbatch`: checked with the input, before any process group."""
    from megatron_bond.commands.score import read_token_rows
    from megatron_bond.config import Config, ConfigError, ModelConfig

    path = tmp_path / "in.jsonl"
    path.write_text('{"tokens": [1, 2, 3]}\n{"tokens": [1, 2, 3, 4, 5]}\n')
    gemma = Config(model=ModelConfig(family="gemma"))
    assert len(read_token_rows(path, gemma, budget=5)) == 2
    with pytest.raises(ConfigError, match=r"in.jsonl:2: 5 tokens exceed --max-tokens-per-microbatch 4"):
        read_token_rows(path, gemma, budget=4)
    with pytest.raises(ConfigError, match="the gpt family's local attention cannot serve packed documents"):
        read_token_rows(path, Config(), budget=8)
