"""Peak memory and time of one Gemma-shaped attention call, forward + backward, old (eager) path against
the paths of ops/attention.py, at several lengths.

    OMP_NUM_THREADS=2 python benchmarks/attention.py --seq 1024,4096,16384 --impl eager,auto --json

Shape (default): Gemma 2 9B's attention per TP rank at TP=4 (4 query heads, 2 KV groups, head dim 256
would be 9B's; 64 here keeps the CPU run short), query_pre_attn_scalar 256, softcap 50, one sliding layer
(window 4096) and one global layer, fp32 (bf16 on CUDA).

One JSON line per (impl, seq, layer):
  path        the path ``auto`` took (sdpa, flex, chunked) or the forced one
  fwd_bwd_s   forward + backward of one call (one run: the long ones take seconds)
  peak_extra_bytes  peak memory above the inputs during forward + backward, minus the returned
              gradients. CPU: a fresh subprocess per line; the high-water mark (VmHWM) is reset through
              /proc/self/clear_refs once the inputs exist (as benchmarks/logprob_head.py). CUDA:
              torch.cuda.max_memory_allocated over the same window.
  skipped     why a line did not run: the eager path's [heads, s, s] fp32 intermediates above --max-eager-gib
              (it holds about five of them: scores, softcapped, masked, softmax, and its gradient)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_bond.ops.attention import attention, attention_path  # noqa: E402

GiB = 2**30


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def run_one(args) -> dict:
    device, seq = torch.device(args.device), int(args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, seq, args.head_dim, generator=gen).to(device, dtype).requires_grad_()
               for n in (args.heads, args.groups, args.groups))
    window = args.window if args.layer == "sliding" else None
    kw = dict(scale=args.scale**-0.5, softcap=args.softcap, window=window, impl=args.impl)
    path = attention_path(q, k, args.softcap, window, None, None) if args.impl == "auto" else args.impl
    grad_out = torch.randn(1, args.heads, seq, args.head_dim, generator=gen).to(device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _proc_status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    attention(q, k, v, **kw).backward(grad_out)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_status("VmHWM") - base
    elapsed = time.perf_counter() - start
    grads = sum(t.grad.numel() * t.grad.element_size() for t in (q, k, v))
    return {"path": path, "fwd_bwd_s": round(elapsed, 3), "peak_extra_bytes": peak - grads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="1024,4096,16384")
    ap.add_argument("--impl", default="eager,auto")
    ap.add_argument("--layer", default="sliding,global")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--scale", type=float, default=256.0, help="query_pre_attn_scalar")
    ap.add_argument("--softcap", type=float, default=50.0)
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--max-eager-gib", type=float, default=6.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return 0
    for seq in map(int, args.seq.split(",")):
        for layer in args.layer.split(","):
            for impl in args.impl.split(","):
                row = {"impl": impl, "seq": seq, "layer": layer, "heads": args.heads, "groups": args.groups,
                       "head_dim": args.head_dim, "softcap": args.softcap,
                       "window": args.window if layer == "sliding" else None, "device": args.device}
                eager_bytes = 5 * 4 * args.heads * seq * seq
                if impl == "eager" and eager_bytes > args.max_eager_gib * GiB:
                    row["skipped"] = f"eager holds ~{eager_bytes / GiB:.1f} GiB of [heads, s, s] fp32 (> --max-eager-gib)"
                else:
                    cmd = [sys.executable, __file__, "--child", f"--seq={seq}", f"--impl={impl}", f"--layer={layer}",
                           f"--heads={args.heads}", f"--groups={args.groups}", f"--head-dim={args.head_dim}",
                           f"--scale={args.scale}", f"--softcap={args.softcap}", f"--window={args.window}",
                           f"--device={args.device}"]
                    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                    row.update(json.loads(done.stdout.splitlines()[-1]))
                print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
