"""Speed and memory of the log-prob heads against naive full logits and the bare matmuls.

    python benchmarks/logprob_head.py --tokens 1024 --hidden 256 --vocab 262144 --dtype fp32 \
        --impl naive,chunked,fused --json

Documented runs (docs/benchmarks.md): that shape, the odd shape --tokens 777 --hidden 320 --vocab 131079,
and the smallest --tokens 256 at V = 262144 on CPU; T=8192, H=3072, V=256000 in bf16 on an H200.

One JSON line per implementation:
  fwd_s       scoring forward (log-probs of the targets, no grad), median of --repeats
  fwd_bwd_s   training loss Σ w·log π forward + backward, median of --repeats
  matmul_s    the three bare matmuls of a forward + backward at the same shapes (same run)
  matmul1_s   the one forward matmul
  peak_extra_bytes  peak memory above the inputs and the returned gradients during one forward +
              backward. CPU: each implementation runs in a fresh subprocess; the kernel's high-water
              mark (VmHWM) is reset through /proc/self/clear_refs once the inputs exist, and the peak is
              VmHWM − VmRSS(then) − bytes(returned gradients). CUDA: torch.cuda.max_memory_allocated
              over the same window.
  max_abs_err largest |difference| to naive over log-probs, loss and both gradients
Implementations: naive (logits → log_softmax → gather, torch autograd), chunked (scoring head,
recomputing each chunk in backward), fused (gradient-in-forward training head), triton (fused with the
Triton elementwise kernels; CUDA only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_bond.ops import HeadSpec, token_logprobs, weighted_logprob_loss  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_inputs(args, device):
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    h = (torch.randn(args.tokens, args.hidden, generator=gen) / args.hidden**0.25).to(device, dtype)
    w = (torch.randn(args.vocab, args.hidden, generator=gen) / args.hidden**0.25).to(device, dtype)
    y = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)
    weights = torch.randn(args.tokens, generator=gen).to(device)
    return h.requires_grad_(True), w.requires_grad_(True), y, weights


def naive_logprobs(h, w, y):
    return torch.log_softmax((h @ w.T).float(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


def scoring(impl, h, w, y):
    if impl == "naive":
        return naive_logprobs(h, w, y)
    return token_logprobs(h, w, y, HeadSpec(backend="triton" if impl == "triton" else "torch"))[0]


def training(impl, h, w, y, weights):
    """Loss value; gradients land in h.grad and w.grad."""
    if impl == "naive":
        loss = (weights * naive_logprobs(h, w, y)).sum()
    elif impl == "chunked":
        loss = (weights * token_logprobs(h, w, y)[0]).sum()
    else:
        loss = weighted_logprob_loss(h, w, y, weights, HeadSpec(backend="triton" if impl == "triton" else "torch"))
    loss.backward()
    return loss.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(impl, h, w, y, weights, device):
    h.grad = w.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        training(impl, h, w, y, weights)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _proc_status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        training(impl, h, w, y, weights)
        peak = _proc_status("VmHWM") - base
    grads = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
    return peak - grads


def run_impl(args) -> dict:
    """In a fresh process: memory first (nothing else allocated yet), then timings, then errors."""
    device = torch.device(args.device)
    h, w, y, weights = make_inputs(args, device)
    peak = peak_extra_bytes(args.impl, h, w, y, weights, device)

    def fwd():
        with torch.no_grad():
            scoring(args.impl, h, w, y)

    def fwd_bwd():
        h.grad = w.grad = None
        training(args.impl, h, w, y, weights)

    fwd_s = median_time(fwd, device, args.repeats)
    fwd_bwd_s = median_time(fwd_bwd, device, args.repeats)
    h.grad = w.grad = None
    with torch.no_grad():
        logp = scoring(args.impl, h, w, y)
    loss = training(args.impl, h, w, y, weights)
    got = [logp, loss, h.grad.clone(), w.grad.clone()]
    h.grad = w.grad = None
    with torch.no_grad():
        ref_logp = naive_logprobs(h, w, y)
    ref_loss = training("naive", h, w, y, weights)
    ref = [ref_logp, ref_loss, h.grad, w.grad]
    err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, ref))
    return {"fwd_s": fwd_s, "fwd_bwd_s": fwd_bwd_s, "peak_extra_bytes": peak, "max_abs_err": err}


def matmul_times(args) -> tuple[float, float]:
    device = torch.device(args.device)
    h, w, _, _ = make_inputs(args, device)
    h, w = h.detach(), w.detach()
    g = torch.randn(args.tokens, args.vocab, device=device).to(h.dtype)

    def three():
        h @ w.T
        g @ w
        g.T @ h

    return median_time(three, device, args.repeats), median_time(lambda: h @ w.T, device, args.repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--impl", default="naive,chunked,fused")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="JSON lines only")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_impl(args)))
        return

    matmul_s, matmul1_s = matmul_times(args)
    for impl in args.impl.split(","):
        if impl == "triton" and args.device == "cpu":
            print("skipping triton: needs CUDA (tested on CPU under TRITON_INTERPRET in tests/)", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--child", "--impl", impl] + [
            f"--{k}={getattr(args, k)}" for k in ("tokens", "hidden", "vocab", "dtype", "repeats", "device")
        ]
        child = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        row = {"impl": impl, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
               "dtype": args.dtype, "device": args.device, **child,
               "matmul_s": matmul_s, "matmul1_s": matmul1_s}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{impl:8s} fwd {row['fwd_s']:.3f}s ({row['fwd_s'] / matmul1_s:.2f}x matmul1)  "
                  f"fwd+bwd {row['fwd_bwd_s']:.3f}s ({row['fwd_bwd_s'] / matmul_s:.2f}x matmuls)  "
                  f"peak extra {row['peak_extra_bytes'] / 2**20:.0f} MiB  err {row['max_abs_err']:.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
