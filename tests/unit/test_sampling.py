"""The sampler draws from softmax(logits / T) restricted to the top-k and top-p sets (chi-square)."""

import math

import pytest
import torch

from megatron_bond.config import ConfigError
from megatron_bond.rollout.sampling import SamplingParams, filtered_logits, gumbel_noise, mix64, sample, uniform


def chi_square_critical(dof: int, alpha: float = 1e-3) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile (z = 3.09 for alpha = 1e-3)."""
    z = {1e-3: 3.090}[alpha]
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=8),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.9, top_k=10, top_p=0.9),
], ids=["plain", "top_k", "top_p", "both"])
def test_empirical_distribution_passes_chi_square(params):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, generator=gen) * 2
    draws = 40000
    tokens, logp = sample(logits.expand(draws, 20), params, seed=1, position=0)
    expected = torch.softmax(filtered_logits(logits.unsqueeze(0), params), -1).squeeze(0).double()
    counts = torch.bincount(tokens, minlength=20).double()
    support = expected > 0
    assert counts[~support].sum() == 0, "a filtered-out token was drawn"
    if params.top_k:
        assert support.sum() <= params.top_k
    exp_counts = expected[support] * draws
    stat = ((counts[support] - exp_counts) ** 2 / exp_counts).sum().item()
    assert stat < chi_square_critical(int(support.sum()) - 1), stat
    # The reported log-prob is the model's: log softmax(logits) of the drawn token, before T and filters.
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[tokens])


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filtered_logits(logits, SamplingParams(top_p=0.8)).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filtered_logits(logits, SamplingParams(top_p=0.81)).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_greedy_and_keyed_noise():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    tokens, _ = sample(logits, SamplingParams(greedy=True), 0, 0)
    assert torch.equal(tokens, logits.argmax(-1))
    a, _ = sample(logits, SamplingParams(), 5, 3)
    assert torch.equal(a, sample(logits, SamplingParams(), 5, 3)[0])
    # The noise is a function of (seed, row, position, token id): seed and position change the draws,
    # and rows of equal logits draw differently.
    flat = torch.zeros(64, 50)
    base = sample(flat, SamplingParams(), 5, 3)[0]
    assert not torch.equal(base, sample(flat, SamplingParams(), 6, 3)[0])
    assert not torch.equal(base, sample(flat, SamplingParams(), 5, 4)[0])
    assert len(set(base.tolist())) > 20


def test_the_int64_hash_wraps_as_exact_integer_arithmetic_says():
    """mix64 on int64 tensors (wrap-around multiplication) equals splitmix64's finaliser computed with
    Python's exact integers, for words with the top bit set or not: a platform whose int64 kernels did
    not wrap would draw other tokens than every other one."""
    mask = (1 << 64) - 1

    def reference(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    words = torch.randint(-(2**63), 2**63 - 1, (2000,), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    got = [v & mask for v in mix64(words).tolist()]
    assert got == [reference(v & mask) for v in words.tolist()]
    assert [mix64(v) & mask for v in words[:50].tolist()] == got[:50]  # the Python-int path for the keys


def test_the_uniform_never_reaches_0_or_1():
    """The extreme words (all bits set, none set): with 53 bits the top one rounded to exactly 1.0, whose
    Gumbel noise is +inf, and −inf (a masked logit) + inf is a NaN that wins the argmax."""
    u = uniform(torch.tensor([-1, 0, 2**62], dtype=torch.int64))
    assert bool(((u > 0) & (u < 1)).all()) and torch.isfinite(-torch.log(-torch.log(u))).all()
    assert (float(2**53 - 1) + 0.5) * 2.0**-53 == 1.0  # why not 53 bits


def test_gumbel_noise_is_standard_gumbel():
    """Mean γ ≈ 0.5772 and variance π²/6 over 10⁶ draws (standard errors 1.3e-3 and 3.6e-3; bounds at 5 SE)."""
    import math

    g = gumbel_noise(123, torch.arange(1000), 7, torch.arange(1000)).flatten()
    assert abs(g.mean().item() - 0.5772157) < 5 * math.sqrt(math.pi**2 / 6 / g.numel())
    assert abs(g.var().item() - math.pi**2 / 6) < 5 * 2.27 / math.sqrt(g.numel())


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"), ({"top_p": 0.0}, "top_p must lie in"),
    ({"top_k": -1}, "top_k must be >= 0"),
])
def test_bad_sampling_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**kwargs)


def _peak_bytes(fn) -> int:
    """The peak of live CPU tensor bytes while ``fn`` runs (the allocator's events in the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    level = peak = 0
    for _, n in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"):
        level += n
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=5, temperature=0.7), SamplingParams(greedy=True)],
                         ids=["plain", "top_k", "greedy"])
def test_the_sampler_works_in_blocks_of_bounded_memory(monkeypatch, params):
    """One block's peak stays under SAMPLER_BYTES_PER_LOGIT (what the memory planner counts), and a batch
    of 8 blocks peaks at one block's working set plus the batch's fp32 copies (8 B a logit), not 8 × it."""
    from megatron_bond.rollout import sampling

    width, rows = 4096, 64
    logits = torch.randn(rows, width)
    one_block = _peak_bytes(lambda: sample(logits, params, 1, 2))
    assert one_block <= sampling.SAMPLER_BYTES_PER_LOGIT * rows * width
    monkeypatch.setattr(sampling, "BLOCK_ELEMENTS", rows * width // 8)
    blocked = _peak_bytes(lambda: sample(logits, params, 1, 2))
    assert blocked <= sampling.SAMPLER_BYTES_PER_LOGIT * rows * width // 8 + 8 * rows * width
    # Blocks change nothing drawn.
    monkeypatch.setattr(sampling, "BLOCK_ELEMENTS", 2**22)
    whole = sample(logits, params, 1, 2)
    monkeypatch.setattr(sampling, "BLOCK_ELEMENTS", rows * width // 8)
    assert all(torch.equal(a, b) for a, b in zip(whole, sample(logits, params, 1, 2)))


@pytest.mark.parametrize("family, on_gpu, refused", [
    ("gpt", True, True), ("gpt", False, False), ("gemma2", True, False),
])
def test_ragged_prompts_are_refused_where_the_attention_drops_the_padding_mask(monkeypatch, family, on_gpu, refused):
    """The GPU branch, with CUDA stubbed: megatron-core's fused attention kernels (the gpt family) replace a
    given mask by their own causal one, so left-padded prompts are refused there in one line."""
    from megatron_bond.config import Config, ModelConfig
    from megatron_bond.rollout.generate import check_padding_mask

    monkeypatch.setattr(torch.cuda, "is_available", lambda: on_gpu)
    cfg = Config(model=ModelConfig(family=family, transformer_impl="local"))
    if refused:
        with pytest.raises(ConfigError, match="drops padding masks on GPU"):
            check_padding_mask(cfg)
    else:
        check_padding_mask(cfg)
