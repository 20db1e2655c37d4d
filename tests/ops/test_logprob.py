"""Fused log-prob heads against the full-logit torch reference: values and gradients."""

import pytest
import torch

from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss
from megatron_bond.ops.reference import reference_token_logprobs, reference_weighted_loss

BACKENDS = ["torch", "triton"]
CASES = {
    "plain": {},
    "softcap": {"softcap": 2.0},
    "temperature": {"temperature": 0.7},
    "padded_vocab": {"vocab_size": 45},
    "all": {"softcap": 2.0, "temperature": 1.3, "vocab_size": 45},
}


def inputs(T=13, H=16, V=50, dtype=torch.float32, seed=0, vocab_size=None):
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, H, generator=gen) * 0.7).to(dtype).requires_grad_(True)
    w = (torch.randn(V, H, generator=gen) * 0.7).to(dtype).requires_grad_(True)
    y = torch.randint(0, vocab_size or V, (T,), generator=gen)
    weights = torch.randn(T, generator=gen)
    return h, w, y, weights



@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("chunk", [1, 5, 64])  # 5 does not divide 13; 64 is one chunk
def test_scoring_values_entropy_and_gradients(backend, case, chunk):
    opts = CASES[case]
    h, w, y, weights = inputs(vocab_size=opts.get("vocab_size"))
    spec = HeadSpec(chunk_size=chunk, backend=backend, **opts)
    logp, ent = token_logprobs(h, w, y, spec, entropy=True)
    ref_logp, ref_ent = reference_token_logprobs(h, w, y, **opts)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad((logp * weights).sum(), (h, w))
    exp = torch.autograd.grad((ref_logp * weights).sum(), (h, w))
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_training_head_value_and_gradients(backend, case, chunk):
    opts = CASES[case]
    h, w, y, weights = inputs(vocab_size=opts.get("vocab_size"))
    spec = HeadSpec(chunk_size=chunk, backend=backend, **opts)
    loss = weighted_logprob_loss(h, w, y, weights, spec)
    ref = reference_weighted_loss(h, w, y, weights, **opts)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(-3.0 * loss, (h, w))  # backward scales the forward-formed gradients
    exp = torch.autograd.grad(-3.0 * ref, (h, w))
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_and_zero_weights(backend):
    h, w, y, _ = inputs(T=1)
    loss = weighted_logprob_loss(h, w, y, torch.zeros(1), HeadSpec(backend=backend))
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert gh.abs().max() == 0 and gw.abs().max() == 0
    logp, _ = token_logprobs(h, w, y, HeadSpec(backend=backend))
    torch.testing.assert_close(logp, reference_token_logprobs(h, w, y)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_sequence_gets_no_gradient(backend):
    """Tokens 0..5 are one sequence with weight 0 (masked out), the rest carry weights."""
    h, w, y, weights = inputs()
    weights[:6] = 0.0
    loss = weighted_logprob_loss(h, w, y, weights, HeadSpec(chunk_size=4, backend=backend))
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert gh[:6].abs().max() == 0
    ref_gh, ref_gw = torch.autograd.grad(reference_weighted_loss(h, w, y, weights), (h, w))
    torch.testing.assert_close(gh, ref_gh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, ref_gw, atol=1e-5, rtol=1e-5)


def test_no_grad_call_returns_the_value_only():
    h, w, y, weights = inputs()
    with torch.no_grad():
        loss = weighted_logprob_loss(h, w, y, weights)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference_weighted_loss(h, w, y, weights).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_inputs(backend):
    """bf16 hidden and weight: the logits matmul rounds to bf16 (8 significant bits, relative error
    ≤ 2^-9), so a logit of size |z| ≲ 4 is off by ≲ 0.01 and a log-prob by at most twice that; the
    reference runs in fp32 on the same bf16 values. Stated tolerance: 3e-2 absolute on log-probs,
    5e-2 absolute + relative on gradients (returned in bf16)."""
    h, w, y, weights = inputs(T=16, H=32, V=64, dtype=torch.bfloat16)
    logp, _ = token_logprobs(h, w, y, HeadSpec(chunk_size=5, backend=backend))
    ref = reference_token_logprobs(h, w, y)[0]
    torch.testing.assert_close(logp, ref, atol=3e-2, rtol=0)
    loss = weighted_logprob_loss(h, w, y, weights, HeadSpec(chunk_size=5, backend=backend))
    got = torch.autograd.grad(loss, (h, w))
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    exp = torch.autograd.grad(reference_weighted_loss(h, w, y, weights), (h, w))
    for g, e in zip(got, exp):
        torch.testing.assert_close(g.float(), e.float(), atol=5e-2, rtol=5e-2)


def test_bad_shapes_are_refused():
    h, w, y, weights = inputs()
    with pytest.raises(ValueError, match="must be \\[T\\]"):
        token_logprobs(h, w, y[:-1])
    with pytest.raises(ValueError, match="must be \\[T, H\\] and \\[V, H\\]"):
        token_logprobs(h, w[:, :-1], y)


def test_training_head_refuses_a_second_backward():
    h, w, y, weights = inputs()
    loss = weighted_logprob_loss(h, w, y, weights)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="supports one backward pass"):
        loss.backward()
