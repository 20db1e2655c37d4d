#!/usr/bin/env bash
# The prepared GPU validation of issue 35, one command for one H100 80 GB (<= 8 minutes):
#   bash tests/gpu/validate.sh OUT
# Stages (tests/gpu/validate.py says what each checks): 0 versions and the NCCL environment; 1 spec parity
# of local and TE specs against HF on CUDA, the TE model loading a converted checkpoint; 2 a 9B-wide J-BOND
# run with a checkpoint and a resume, memory against the plan; 3 one 9B layer's activations against the
# plan; 4 the log-prob head at Gemma scale. Writes OUT/validate.jsonl (JSON lines) and OUT/summary.txt (a
# verdict per stage: passed, failed, or "not validated" where TE, vLLM or CUDA is absent). No downloads:
# random-init models built here; megatron-core from a wheel in .whl/ if the image lacks it (see
# tests/gpu/device_checks.sh for how to fetch it). Exit status: the number of failed stages.
set -uo pipefail
out=${1:?usage: bash tests/gpu/validate.sh OUT}
mkdir -p "$out"
rm -f "$out/validate.jsonl" "$out/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia_smi.csv"
failed=0
# per-stage limits (seconds), 450 in all: a hung stage fails alone
for stage_limit in 0:30 1:120 2:180 3:40 4:80; do
    stage=${stage_limit%%:*}
    timeout "${stage_limit##*:}" "$PY" -m tests.gpu.validate "$out" "$stage" "${@:2}"
    rc=$?
    [ "$rc" -ne 0 ] && failed=$((failed + 1))
    # a stage killed by its limit, or one that could not start, has written no verdict of its own
    grep -q "^stage $stage:" "$out/summary.txt" 2>/dev/null || echo "stage $stage: failed (exit $rc$([ "$rc" -eq 124 ] && echo ", timed out after ${stage_limit##*:} s"))" >> "$out/summary.txt"
done
cat "$out/summary.txt"
exit "$failed"
