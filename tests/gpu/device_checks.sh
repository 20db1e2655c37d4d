#!/usr/bin/env bash
# The GPU checks, as one command for a lent H100/H200 (no megatron-core needed):
#   bash tests/gpu/device_checks.sh OUTDIR
# 1. tests/gpu (Triton kernels compiled for the device, torch path on CUDA, Gemma-scale bf16 check);
# 2. the log-prob head benchmark at T=8192, H=3072, V=256000 bf16 against the bare cuBLAS matmuls.
set -uo pipefail
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.csv"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$out/versions.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/pytest_gpu.txt"
python3 benchmarks/logprob_head.py --tokens 8192 --hidden 3072 --vocab 256000 --dtype bf16 \
    --impl naive,chunked,fused,triton --json 2>&1 | tee "$out/logprob_head_gpu_bf16.jsonl"
