"""The log-prob heads on a real GPU: Triton kernels compiled for the device, torch path on CUDA.

Runs where CUDA exists (skipped elsewhere by tests/conftest.py); tests/gpu/device_checks.sh runs it on
a lent H100/H200 together with the CUDA benchmark.
"""

import pytest
import torch

from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss
from megatron_bond.ops.reference import reference_token_logprobs, reference_weighted_loss

pytestmark = pytest.mark.gpu


def inputs(T, H, V, dtype, vocab_size=None, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(T, H, generator=gen) * scale / H**0.25).to("cuda", dtype).requires_grad_(True)
    w = (torch.randn(V, H, generator=gen) * scale / H**0.25).to("cuda", dtype).requires_grad_(True)
    y = torch.randint(0, vocab_size or V, (T,), generator=gen).cuda()
    weights = torch.randn(T, generator=gen).cuda()
    return h, w, y, weights


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("opts", [{}, {"softcap": 30.0, "temperature": 0.7, "vocab_size": 1000}], ids=["plain", "all"])
@pytest.mark.parametrize("chunk", [7, None])
def test_fp32_matches_reference(backend, opts, chunk):
    h, w, y, weights = inputs(77, 64, 1024, torch.float32, opts.get("vocab_size"))
    spec = HeadSpec(chunk_size=chunk, backend=backend, **opts)
    logp, ent = token_logprobs(h, w, y, spec, entropy=True)
    ref_logp, ref_ent = reference_token_logprobs(h, w, y, **opts)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    loss = weighted_logprob_loss(h, w, y, weights, spec)
    got = torch.autograd.grad(loss, (h, w))
    ref_loss = reference_weighted_loss(h, w, y, weights, **opts)
    exp = torch.autograd.grad(ref_loss, (h, w))
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-5)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_at_gemma_scale(backend):
    """T=8192, H=3072, V=256000 (Gemma 7B's output layer) in bf16 against the fp32 reference on the same
    bf16 values. The logits matmul rounds its output to bf16 (relative 2^-9): log-probs within 0.05
    absolute; gradients (bf16) within 2e-2 absolute plus 5% relative."""
    T, H, V = 8192, 3072, 256000
    h, w, y, weights = inputs(T, H, V, torch.bfloat16)
    spec = HeadSpec(backend=backend, softcap=30.0)
    with torch.no_grad():
        logp, _ = token_logprobs(h, w, y, spec)
        ref = reference_token_logprobs(h, w, y, softcap=30.0)[0]
    assert (logp - ref).abs().max().item() < 0.05
    del ref
    loss = weighted_logprob_loss(h, w, y, weights, spec)
    gh, gw = torch.autograd.grad(loss, (h, w))
    rh, rw = torch.autograd.grad(reference_weighted_loss(h, w, y, weights, softcap=30.0), (h, w))
    torch.testing.assert_close(gh.float(), rh.float(), atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(gw.float(), rw.float(), atol=2e-2, rtol=5e-2)
