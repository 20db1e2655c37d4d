"""Fused log-prob heads against the full-logit torch reference: values and gradients.

fp32 tolerance: the fused ops compute the reference's sums chunk by chunk and in another order. With
T = 13 tokens, H = 16 and V = 50 every compared value comes out of at most 3 chained sums (logits over H,
the normaliser over V, a gradient over V or over T) of at most 50 terms, so by tests/tolerances.py it
moves by at most 3·50·u·max|reference| (9e-6 of the scale) on any CPU.
"""

import pytest
import torch

from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss
from megatron_bond.ops.reference import reference_token_logprobs, reference_weighted_loss
from tests.tolerances import U16, assert_reorder_close

TERMS, DEPTH = 50, 3


def close(got, ref, what=""):
    assert_reorder_close(got, ref, TERMS, DEPTH, what)

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
    close(logp, ref_logp, "logp")
    close(ent, ref_ent, "entropy")
    got = torch.autograd.grad((logp * weights).sum(), (h, w))
    exp = torch.autograd.grad((ref_logp * weights).sum(), (h, w))
    for g, e in zip(got, exp):
        close(g, e, "gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_training_head_value_and_gradients(backend, case, chunk):
    opts = CASES[case]
    h, w, y, weights = inputs(vocab_size=opts.get("vocab_size"))
    spec = HeadSpec(chunk_size=chunk, backend=backend, **opts)
    loss = weighted_logprob_loss(h, w, y, weights, spec)
    ref = reference_weighted_loss(h, w, y, weights, **opts)
    close(loss, ref, "loss")
    got = torch.autograd.grad(-3.0 * loss, (h, w))  # backward scales the forward-formed gradients
    exp = torch.autograd.grad(-3.0 * ref, (h, w))
    for g, e in zip(got, exp):
        close(g, e, "gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_and_zero_weights(backend):
    h, w, y, _ = inputs(T=1)
    loss = weighted_logprob_loss(h, w, y, torch.zeros(1), HeadSpec(backend=backend))
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert gh.abs().max() == 0 and gw.abs().max() == 0
    logp, _ = token_logprobs(h, w, y, HeadSpec(backend=backend))
    close(logp, reference_token_logprobs(h, w, y)[0], "logp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_sequence_gets_no_gradient(backend):
    """Tokens 0..5 are one sequence with weight 0 (masked out), the rest carry weights."""
    h, w, y, weights = inputs()
    weights[:6] = 0.0
    loss = weighted_logprob_loss(h, w, y, weights, HeadSpec(chunk_size=4, backend=backend))
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert gh[:6].abs().max() == 0
    ref_gh, ref_gw = torch.autograd.grad(reference_weighted_loss(h, w, y, weights), (h, w))
    close(gh, ref_gh, "grad_h")
    close(gw, ref_gw, "grad_w")


def test_no_grad_call_returns_the_value_only():
    h, w, y, weights = inputs()
    with torch.no_grad():
        loss = weighted_logprob_loss(h, w, y, weights)
    assert not loss.requires_grad
    close(loss, reference_weighted_loss(h, w, y, weights).detach(), "loss")


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


def test_bf16_logits_stay_fp32_without_an_fp32_output_matmul(monkeypatch):
    """Where torch.mm has no out_dtype (CPU, or an older torch on CUDA), the logits of bf16 operands are
    an fp32 matmul of the same values, never rounded to bf16. Bound: the reference is the same fp32
    product and log-softmax of the same values, reordered (H = 32 and V = 64 terms, depth 3)."""
    import megatron_bond.ops.logprob as logprob

    monkeypatch.setattr(logprob, "_MM_FP32_OUT", False)
    h, w, y, _ = inputs(T=16, H=32, V=64, dtype=torch.bfloat16)
    with torch.no_grad():
        logp, _ = token_logprobs(h, w, y, HeadSpec(chunk_size=5))
        ref = torch.log_softmax(h.float() @ w.float().T, -1).gather(-1, y[:, None]).squeeze(-1)
    assert logp.dtype == torch.float32
    assert_reorder_close(logp, ref, 64, 3, "bf16 logits")  # bf16 rounding would be ~1e-2 off


@pytest.mark.parametrize("loss_scale", [4096.0, 65536.0])
def test_fp16_training_head_under_loss_scaling(loss_scale):
    """fp16 training as Megatron runs it: the schedule multiplies the loss by the loss scale S, so the
    head's backward receives S, and the gradients must come out as S·∂L in fp16.

    Realistic magnitudes: coefficients (R − B)/B for a batch of B = 128 prompts, V = 32768, so p of a
    non-target row is about 3e-5 and coef·p about 1e-7..1e-10: below fp16's smallest subnormal (6e-8)
    unless scaled first. Before the fix the head rounded its gradients to fp16 in forward and scaled them
    in fp16 afterwards: at S = 4096, 7 % of the weight gradient's entries were flushed to 0 (more at
    larger vocabularies: 19 % at 65536), at S = 65536 every gradient overflowed.

    Tolerance: the logits are rounded to fp16 (relative u16 = 2^-11, |z| ≤ 3 here), which moves each
    softmax probability by a relative 2·u16·max|z| at most, and the scaled gradients are rounded to fp16
    once more (u16). Normwise the error is at most u16·(1 + 2·max|z|) ≈ 3.4e-3 of the reference's norm.
    """
    gen = torch.Generator().manual_seed(0)
    T, H, V = 32, 64, 32768
    h = (0.25 * torch.randn(T, H, generator=gen)).half().requires_grad_(True)
    w = (0.25 * torch.randn(V, H, generator=gen)).half().requires_grad_(True)
    y = torch.randint(0, V, (T,), generator=gen)
    coef = torch.randn(T, generator=gen) / 128
    got = torch.autograd.grad(loss_scale * weighted_logprob_loss(h, w, y, coef), (h, w))
    h32, w32 = h.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    exp = torch.autograd.grad(reference_weighted_loss(h32, w32, y, coef), (h32, w32))
    max_z = (h32 @ w32.T).abs().max().item()
    for g, e, name in zip(got, exp, ("grad_h", "grad_w")):
        assert g.dtype == torch.float16
        assert (loss_scale * e).abs().max() < 65504, "the reference must fit fp16 at this scale (as a loss scaler ensures)"
        assert torch.isfinite(g).all(), name
        unscaled = g.float() / loss_scale
        assert (unscaled == 0).float().mean() <= (e == 0).float().mean() + 1e-3, f"{name}: entries flushed to 0"
        assert (unscaled - e).norm() <= U16 * (1 + 2 * max_z) * e.norm(), name


def test_chunks_are_a_fraction_of_the_tokens():
    """Fused memory stays a small fraction of naive's at any T: chunks of at most T/8 tokens (and of
    the device budget), whatever T and V."""
    cpu = torch.device("cpu")
    assert HeadSpec().tokens_per_chunk(1024, 262144, cpu) == 128  # the benchmark's shape: unchanged
    assert HeadSpec().tokens_per_chunk(777, 131079, cpu) == 98  # was 256 (the budget alone)
    assert HeadSpec().tokens_per_chunk(5, 50, cpu) == 1
    assert HeadSpec(chunk_size=7).tokens_per_chunk(777, 131079, cpu) == 7


def test_bad_inputs_are_refused_with_one_line():
    h, w, y, weights = inputs()
    cases = [
        (lambda: token_logprobs(h, w, y[:-1]), "must be \\[T\\] integer ids"),
        (lambda: token_logprobs(h, w[:, :-1], y), "must be \\[T, H\\] and \\[V, H\\]"),
        (lambda: token_logprobs(h, w.double(), y), "must share one floating dtype"),
        (lambda: token_logprobs(h, w, y.float()), "integer ids"),
        (lambda: weighted_logprob_loss(h, w, y, weights[:1]), "weights \\(1,\\).* must be \\[T\\]"),
        (lambda: weighted_logprob_loss(h, w, y, weights.long()), "must be \\[T\\] floating"),
        (lambda: weighted_logprob_loss(h, w, y, weights.to("meta")), "different devices"),
        (lambda: token_logprobs(h, w, y, HeadSpec(temperature=0.0)), "must be > 0"),
        (lambda: token_logprobs(h, w, y, HeadSpec(chunk_size=0)), "chunk_size must be >= 1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_training_head_refuses_a_second_backward():
    h, w, y, weights = inputs()
    loss = weighted_logprob_loss(h, w, y, weights)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="supports one backward pass"):
        loss.backward()
