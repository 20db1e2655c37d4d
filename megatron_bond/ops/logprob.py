"""Vocab-parallel fused linear → log-prob heads that never hold more than a chunk of logits.

Inputs on every tensor-parallel rank: hidden [T, H] (replicated), the rank's vocab shard of the output
weight [V/TP, H] starting at row ``vocab_start`` of the full vocabulary, targets [T] (global ids).
Across ranks only per-token statistics travel: the max, then (Σ exp, target logit, Σ exp·z) in one
all-reduce per chunk of tokens.

- ``token_logprobs``: log π(y_t) (and the entropy) for scoring; differentiable, recomputing each
  chunk's logits in backward.
- ``weighted_logprob_loss``: Σ_t w_t · log π(y_t) for training, where w_t are stop-gradient weights
  known before the pass (every BOND term has this form, docs/bond.md). The gradients for hidden and
  weight are formed chunk by chunk during forward and only scaled in backward: forward + backward is
  the three matmuls of the output layer and nothing more.

Logit transform, in order: Gemma 2 final softcap c·tanh(z/c), then 1/temperature, then −inf on padded
vocab rows (global id ≥ ``vocab_size``). ``backend="triton"`` runs the per-chunk elementwise work in
Triton kernels (ops/triton_kernels.py); matmuls stay with cuBLAS / torch either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


# fp32 logits per chunk: at most 128 MiB on CPU (128 tokens at a 262k vocabulary), 1 GiB on GPU, where
# skinny chunks would starve the matmuls ...
CHUNK_BUDGET_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 28}
# ... and at most 1/8 of the tokens: a naive head holds about three [T, V] fp32 tensors (logits,
# log-softmax, their gradient), so a chunk of T/8 tokens keeps the fused head's extra memory near
# 1/24 of naive's at any T, not only where T is large against the budget.
CHUNK_FRACTION_OF_TOKENS = 8
# A finite floor for a shard's row max: a shard whose rows are all padding (−inf) would otherwise give
# exp(−inf − (−inf)) = NaN, and the all-reduce would spread it to every rank (the Triton kernels use
# the same floor).
NEG_BIG = -1.0e30
# torch.mm(..., out_dtype=torch.float32): bf16 inputs, fp32 accumulation and output (CUDA only; without
# it the logits fall back to an fp32 matmul of upcast operands, see _chunk_logits).
_MM_FP32_OUT = hasattr(torch.ops.aten.mm, "dtype_out") and hasattr(torch.ops.aten.addmm, "dtype_out")


@dataclass(frozen=True)
class HeadSpec:
    vocab_start: int = 0
    vocab_size: int | None = None  # real vocabulary; None: every row of the weight is real
    softcap: float | None = None
    temperature: float = 1.0
    chunk_size: int | None = None  # tokens per chunk; None: CHUNK_BUDGET_ELEMENTS of logits
    group: dist.ProcessGroup | None = None  # tensor-parallel group; None: the full vocab is here
    backend: str = "torch"
    # The hidden states are replicated over TP, so their gradient is the sum of the shards' partial
    # gradients: all-reduced here, unless the caller's backward sums them (behind megatron-core's
    # sequence-parallel gather, whose backward is a reduce-scatter: all-reducing too would count TP times).
    reduce_hidden_grad: bool = True

    def tokens_per_chunk(self, tokens: int, rows: int, device: torch.device) -> int:
        if self.chunk_size:
            return self.chunk_size
        budget = CHUNK_BUDGET_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]
        return max(1, min(budget // rows, -(-tokens // CHUNK_FRACTION_OF_TOKENS)))

    def valid_rows(self, rows: int) -> int:
        """Rows of this shard that are real vocabulary (the rest is padding)."""
        if self.vocab_size is None:
            return rows
        return max(0, min(rows, self.vocab_size - self.vocab_start))


def _all_reduce(t: Tensor, spec: HeadSpec, op=dist.ReduceOp.SUM) -> Tensor:
    if spec.group is not None and dist.get_world_size(spec.group) > 1:
        dist.all_reduce(t, op=op, group=spec.group)
    return t


def _local_targets(targets: Tensor, rows: int, spec: HeadSpec) -> tuple[Tensor, Tensor]:
    local = targets - spec.vocab_start
    here = (local >= 0) & (local < rows)
    return local.clamp(0, rows - 1), here


def _chunk_logits(h: Tensor, weight: Tensor, spec: HeadSpec, out: Tensor) -> Tensor | None:
    """Fill ``out`` [Tc, V/TP] (fp32) with transformed logits; return d(z)/d(raw logit) for softcap."""
    if h.dtype == torch.float32:
        torch.mm(h, weight.T, out=out)
    elif h.is_cuda and _MM_FP32_OUT:
        torch.mm(h, weight.T, out_dtype=torch.float32, out=out)
    else:  # no fp32-output matmul here (CPU, or a torch without out_dtype): an fp32 product of the same
        # values, so the logits are never rounded to the model dtype (bf16 keeps 8 bits: ±0.03 at |z| = 8)
        torch.mm(h.float(), weight.T.float(), out=out)
    dcap = None
    if spec.softcap:
        out.div_(spec.softcap).tanh_()
        dcap = 1.0 - out * out  # derivative of c·tanh(x/c), before the scale is applied
        out.mul_(spec.softcap)
    if spec.temperature != 1.0:
        out.div_(spec.temperature)
    valid = spec.valid_rows(out.shape[1])
    if valid < out.shape[1]:
        out[:, valid:] = float("-inf")
    return dcap


def _local_stats(z: Tensor, local_t: Tensor, here: Tensor, spec: HeadSpec, entropy: bool):
    """This shard's row max m, Σ exp(z − m), target logit (0 if elsewhere), Σ exp(z − m)·z.

    The torch backend without entropy overwrites ``z`` with exp(z − m) (one pass and one buffer fewer);
    the Triton kernels leave it as logits. ``_chunk_grad_`` takes either.
    """
    if spec.backend == "triton":
        from megatron_bond.ops.triton_kernels import row_stats

        return row_stats(z, local_t, here)
    m = z.amax(dim=1).clamp_min_(NEG_BIG)  # amax: no argmax to compute, about 3x faster than max on CPU
    target = torch.where(here, z.gather(1, local_t.unsqueeze(1)).squeeze(1), 0.0)
    if entropy:
        e = torch.exp(z - m.unsqueeze(1))
        ez = (e * torch.where(e > 0, z, 0.0)).sum(1)
    else:
        e = z.sub_(m.unsqueeze(1)).exp_()
        ez = torch.zeros_like(m)
    return m, e.sum(1), target, ez


def _chunk_stats(z: Tensor, local_t: Tensor, here: Tensor, spec: HeadSpec, entropy: bool):
    """Global log-normaliser, log π(y_t), entropy (or None) and this shard's max, per token.

    Shards rescale their sums to the global max, then one all-reduce carries (Σ exp, target, Σ exp·z).
    """
    m_local, s_local, target, ez_local = _local_stats(z, local_t, here, spec, entropy)
    m = _all_reduce(m_local.clone(), spec, dist.ReduceOp.MAX)
    scale = torch.exp(m_local - m)
    stats = _all_reduce(torch.stack([s_local * scale, target, ez_local * scale]), spec)
    lse = m + stats[0].log()
    ent = lse - stats[2] / stats[0] if entropy else None
    return lse, stats[1] - lse, ent, m_local


def _chunk_grad_(z: Tensor, dcap: Tensor | None, lse: Tensor, m_local: Tensor, coef: Tensor,
                 local_t: Tensor, here: Tensor, spec: HeadSpec) -> Tensor:
    """Turn the chunk in place into d(Σ coef_t log π(y_t))/d(raw logits) = coef·(onehot − p)·dz.

    Torch backend: ``z`` holds exp(z − m_local), so p = z·exp(m_local − lse); Triton: ``z`` holds logits.
    """
    if spec.backend == "triton":
        from megatron_bond.ops.triton_kernels import logprob_grad_

        logprob_grad_(z, lse, coef, local_t, here, spec.temperature, dcap)
        return z
    z.mul_((-coef * torch.exp(m_local - lse)).unsqueeze(1))
    z.scatter_add_(1, local_t.unsqueeze(1), torch.where(here, coef, 0.0).unsqueeze(1))  # no host sync
    if dcap is not None:
        z.mul_(dcap)
    if spec.temperature != 1.0:
        z.div_(spec.temperature)
    return z


def _chunks(hidden: Tensor, weight: Tensor, targets: Tensor, spec: HeadSpec):
    """Per chunk of tokens: (token slice, transformed logits in one reused fp32 buffer, softcap
    derivative or None, local targets, whether each target lives on this shard)."""
    T, rows = hidden.shape[0], weight.shape[0]
    step = spec.tokens_per_chunk(T, rows, hidden.device)
    buf = torch.empty(min(step, T), rows, dtype=torch.float32, device=hidden.device)
    local_t, here = _local_targets(targets, rows, spec)
    for s in range(0, T, step):
        e = min(s + step, T)
        z = buf[: e - s]
        dcap = _chunk_logits(hidden[s:e], weight, spec, z)
        yield slice(s, e), z, dcap, local_t[s:e], here[s:e]


def _check(hidden: Tensor, weight: Tensor, targets: Tensor, spec: HeadSpec, weights: Tensor | None = None) -> None:
    """Every input's shape, dtype and device, once, at the entry of a public op (one-line errors)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be [T, H] and [V, H]")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one floating dtype")
    tensors = {"hidden": hidden, "weight": weight, "targets": targets}
    if targets.shape != hidden.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets {tuple(targets.shape)} {targets.dtype} must be [T] integer ids for hidden "
                         f"{tuple(hidden.shape)}")
    if weights is not None:
        tensors["weights"] = weights
        if weights.shape != hidden.shape[:1] or not weights.is_floating_point():
            raise ValueError(f"weights {tuple(weights.shape)} {weights.dtype} must be [T] floating, one per "
                             f"token of hidden {tuple(hidden.shape)}")
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs are on different devices: {devices}")
    if spec.chunk_size is not None and spec.chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if spec.temperature <= 0 or (spec.softcap is not None and spec.softcap <= 0):
        raise ValueError(f"temperature ({spec.temperature}) and softcap ({spec.softcap}) must be > 0")


def _scores(hidden, weight, targets, spec: HeadSpec, entropy: bool):
    """Chunked forward: (log π(y_t), log-normaliser, entropy or None), each [T] fp32."""
    logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if entropy else None
    for c, z, _, local_t, here in _chunks(hidden, weight, targets, spec):
        lse[c], logp[c], chunk_ent, _ = _chunk_stats(z, local_t, here, spec, entropy)
        if entropy:
            ent[c] = chunk_ent
    return logp, lse, ent


class TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, spec: HeadSpec, entropy: bool):
        logp, lse, ent = _scores(hidden, weight, targets, spec, entropy)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.spec = spec
        if entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_h, grad_w = _fused_grads(hidden, weight, targets, grad_logp.float(), ctx.spec, lse)
        return grad_h.to(hidden.dtype), grad_w.to(weight.dtype), None, None, None


def _gradient_operand(t: Tensor) -> Tensor:
    """The operand that the per-token logit gradients multiply. fp16 is upcast to fp32 once per call:
    coef·p of the non-target rows falls below fp16's smallest subnormal (6e-8) and would flush to zero.
    bf16 keeps fp32's exponent range, so it stays bf16 (tensor cores on GPU)."""
    return t.float() if t.dtype == torch.float16 else t


def _mm_into(out: Tensor, g: Tensor, b: Tensor, accumulate: bool) -> None:
    """``out`` (fp32) = [out +] g·b for fp32 per-token gradients ``g`` and ``b`` in fp32 or bf16."""
    if b.dtype == torch.float32:
        if accumulate:
            out.addmm_(g, b)
        else:
            torch.mm(g, b, out=out)
    elif b.is_cuda and _MM_FP32_OUT:  # bf16 operands, fp32 accumulation and output
        if accumulate:
            torch.addmm(out, g.to(b.dtype), b, out_dtype=torch.float32, out=out)
        else:
            torch.mm(g.to(b.dtype), b, out_dtype=torch.float32, out=out)
    elif accumulate:  # CPU bf16 weight gradient: fp32 product of a chunk of hidden states
        out.addmm_(g, b.float())
    else:  # CPU bf16 hidden gradient: the product is rounded to bf16 (CPU kernels have no fp32 output)
        out.copy_(g.to(b.dtype) @ b)


def _fused_grads(hidden, weight, targets, coef, spec: HeadSpec, lse_all=None, with_value=False):
    """Chunked pass forming dΣ coef_t log π(y_t) / d(hidden, weight); optionally the value too.

    Both gradients are returned in fp32: the caller applies the incoming gradient (the loss scale under
    fp16) in fp32 and only then casts to the input dtypes, so nothing overflows or underflows on the way.
    """
    grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    value = torch.zeros((), dtype=torch.float32, device=hidden.device)
    w_op, h_op = _gradient_operand(weight), _gradient_operand(hidden)
    for c, z, dcap, local_t, here in _chunks(hidden, weight, targets, spec):
        if lse_all is None:
            lse, logp, _, m_local = _chunk_stats(z, local_t, here, spec, entropy=False)
            value += (coef[c] * logp).sum()
        else:  # recompute in backward: the global normaliser is known, the local max is one pass
            lse = lse_all[c]
            m_local = _local_stats(z, local_t, here, spec, entropy=False)[0]
        g = _chunk_grad_(z, dcap, lse, m_local, coef[c], local_t, here, spec)
        _mm_into(grad_h[c], g, w_op, accumulate=False)
        _mm_into(grad_w, g.T, h_op[c], accumulate=True)
    if spec.reduce_hidden_grad:
        _all_reduce(grad_h, spec)
    return (grad_h, grad_w, value) if with_value else (grad_h, grad_w)


class WeightedLogProbLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, spec: HeadSpec, needs_grad: bool):
        coef = weights.detach().float()
        if not needs_grad:
            return (coef * _scores(hidden, weight, targets, spec, entropy=False)[0]).sum()
        grad_h, grad_w, value = _fused_grads(hidden, weight, targets, coef, spec, with_value=True)
        ctx.grads = (grad_h, grad_w)  # fp32; not save_for_backward: they are scaled in place in backward
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return value

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("weighted_logprob_loss supports one backward pass (no retain_graph reuse)")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        scale = grad_out.float()  # the loss scale under fp16: applied in fp32, before any rounding
        grad_h.mul_(scale)  # in place: a scaled copy would double the peak
        grad_w.mul_(scale)
        h_dtype, w_dtype = ctx.dtypes
        return grad_h.to(h_dtype), grad_w.to(w_dtype), None, None, None, None


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, spec: HeadSpec = HeadSpec(),
                   entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """fp32 log π(y_t) [T] (and entropy [T], not differentiable, when asked)."""
    _check(hidden, weight, targets, spec)
    return TokenLogProbs.apply(hidden, weight, targets, spec, entropy)


def weighted_logprob_loss(hidden: Tensor, weight: Tensor, targets: Tensor, weights: Tensor,
                          spec: HeadSpec = HeadSpec()) -> Tensor:
    """Σ_t w_t · log π(y_t) (fp32 scalar) with gradients formed during forward."""
    _check(hidden, weight, targets, spec, weights)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return WeightedLogProbLoss.apply(hidden, weight, targets, weights, spec, needs_grad)
