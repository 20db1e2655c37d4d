#!/usr/bin/env bash
# The GPU checks, as one command for a lent H100/H200:
#   bash tests/gpu/device_checks.sh OUTDIR
# The device image has torch, triton and transformers but not megatron-core: put its wheel in .whl/
# (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
#  --platform manylinux_2_28_x86_64 -d .whl megatron_core==0.16.1) and carry .whl.
# 1. every test marked gpu: the log-prob heads (Triton kernels compiled for the device, torch path on
#    CUDA, Gemma-scale bf16), HF parity of converted checkpoints on CUDA, the trainer's CUDA defaults
#    (bf16, distributed optimizer, fp32 EMA on its shards, checkpoint and resume), the TE layer spec
#    where Transformer Engine is installed;
# 2. the log-prob head benchmark at T=8192, H=3072, V=256000 bf16 against the bare cuBLAS matmuls.
set -uo pipefail
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    # into the interpreter's own site-packages: the tests' subprocesses set PYTHONPATH themselves
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.csv"
python3 -c "import torch, triton, transformers, megatron.core as m; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'megatron-core', m.__version__)" | tee "$out/versions.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu -rs -s tests 2>&1 | tee "$out/pytest_gpu.txt"
timeout 150 python3 benchmarks/logprob_head.py --tokens 8192 --hidden 3072 --vocab 256000 --dtype bf16 \
    --impl naive,chunked,fused,triton --json 2>&1 | tee "$out/logprob_head_gpu_bf16.jsonl"
