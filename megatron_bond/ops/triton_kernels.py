"""Triton kernels for the elementwise half of the log-prob heads (the matmuls stay with cuBLAS).

Per chunk of logits z [Tc, V/TP] (fp32, row-major):
- ``row_stats``: one pass with an online softmax: the shard's row max m, Σ exp(z − m), Σ exp(z − m)·z
  and the target logit (0 where the target lives on another shard);
- ``logprob_grad_``: z ← coef·(onehot(y) − exp(z − lse))·dz in place, the gradient for the raw logits.
On a CUDA-less machine they run under ``TRITON_INTERPRET=1`` (set before this module is imported).
The running max starts at a finite −1e30, not −inf: a row block that is all padding (−inf) would
otherwise give exp(−inf + inf) = NaN.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_BIG = tl.constexpr(-1.0e30)  # a kernel may only read constexpr globals


@triton.jit
def _row_stats_kernel(z_ptr, stride, n_cols, tgt_ptr, here_ptr, m_ptr, s_ptr, t_ptr, ez_ptr,
                      BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = z_ptr + row * stride
    m = tl.full((), NEG_BIG, tl.float32)
    s = tl.zeros((), tl.float32)
    ez = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols, mask=cols < n_cols, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        finite_z = tl.where(z > NEG_BIG, z, 0.0)
        s = s * scale + tl.sum(e, axis=0)
        ez = ez * scale + tl.sum(e * finite_z, axis=0)
        m = m_new
    tgt = tl.load(tgt_ptr + row)
    here = tl.load(here_ptr + row)
    t = tl.where(here != 0, tl.load(base + tgt), 0.0)
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(t_ptr + row, t)
    tl.store(ez_ptr + row, ez)


@triton.jit
def _grad_kernel(z_ptr, stride, n_cols, lse_ptr, coef_ptr, tgt_ptr, here_ptr, dcap_ptr, inv_temp,
                 HAS_CAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    ptrs = z_ptr + row * stride + cols
    z = tl.load(ptrs, mask=mask, other=float("-inf"))
    lse = tl.load(lse_ptr + row)
    coef = tl.load(coef_ptr + row)
    tgt = tl.load(tgt_ptr + row)
    here = tl.load(here_ptr + row)
    g = -coef * tl.exp(z - lse)
    g = tl.where((cols == tgt) & (here != 0), g + coef, g)
    if HAS_CAP:
        g = g * tl.load(dcap_ptr + row * stride + cols, mask=mask, other=0.0)
    tl.store(ptrs, g * inv_temp, mask=mask)


def _block(n_cols: int) -> int:
    return min(4096, triton.next_power_of_2(max(n_cols, 16)))


def row_stats(z: torch.Tensor, local_t: torch.Tensor, here: torch.Tensor):
    """(m, Σ exp(z−m), target logit, Σ exp(z−m)·z) per row of this shard, each [Tc] fp32."""
    rows, cols = z.shape
    out = torch.empty(4, rows, dtype=torch.float32, device=z.device)
    _row_stats_kernel[(rows,)](
        z, z.stride(0), cols, local_t, here.to(torch.int8), out[0], out[1], out[2], out[3],
        BLOCK=_block(cols),
    )
    return out[0], out[1], out[2], out[3]


def logprob_grad_(z, lse, coef, local_t, here, temperature: float, dcap=None) -> None:
    rows, cols = z.shape
    block = _block(cols)
    _grad_kernel[(rows, triton.cdiv(cols, block))](
        z, z.stride(0), cols, lse.contiguous(), coef.contiguous(), local_t, here.to(torch.int8),
        z if dcap is None else dcap, 1.0 / temperature, HAS_CAP=dcap is not None, BLOCK=block,
    )
