"""The memory plan with the vLLM engine (rollout.engine=vllm): its pool replaces the native decode loop's
buffers in the rollout and eval phases only (it sleeps in the others, holding what sleep does not free),
a refit adds one tensor gathered whole and its concatenation, and a layout the engine refuses is refused by the planner too."""

import dataclasses
import subprocess
import sys

import pytest

from megatron_bond.config import load_config
from megatron_bond.memory import GiB, VLLM_ASLEEP_BYTES, Allocation, plan
from megatron_bond.resolve import resolve_config

ALLOC = Allocation(nodes=1, gpus_per_node=8, gpu_memory_gb=80.0)
RECIPE = "recipes/jbond_gemma2_9b.yaml"  # tp 8, pp 1


def _cfg(*overrides, on_gpu=True):
    return resolve_config(load_config(RECIPE, ["policy.ckpt=null", "reward.ckpt=null", *overrides]), on_gpu=on_gpu)


def test_the_engine_pool_replaces_the_native_rollout_buffers_on_gpu():
    native, vllm = plan(_cfg(), ALLOC), plan(_cfg("rollout.engine=vllm", "rollout.vllm_memory_fraction=0.3"), ALLOC)
    # Gemma 2 9B: 256000 × 3584 bf16 embedding gathered whole at TP = 8 and concatenated (2 copies); 0.3
    # of an 80 GiB GPU.
    for phase in ("rollout", "eval"):
        assert sorted(vllm.phases[phase].values()) == sorted([2 * 2 * 256000 * 3584, 0.3 * 80 * GiB])
        assert not any(k.startswith("KV cache") for k in vllm.phases[phase])
    assert {ph: v for ph, v in vllm.phases.items() if ph not in ("rollout", "eval")} == \
        {ph: v for ph, v in native.phases.items() if ph not in ("rollout", "eval")}
    # What sleep does not free (CUDA graphs, communicators) is held in every phase.
    assert {k: v for k, v in vllm.resident.items() if k not in native.resident} == {
        "vLLM engine asleep: CUDA-graph pool, communicators, buffers (estimate)": VLLM_ASLEEP_BYTES}
    larger = plan(_cfg("rollout.engine=vllm", "rollout.vllm_memory_fraction=0.5"), ALLOC)
    # 0.2 of the GPU more, with the allocator's 10 % slack on it
    assert abs(larger.phase_total("rollout") - vllm.phase_total("rollout") - 1.1 * 0.2 * 80 * GiB) < 1.0


@pytest.mark.parametrize("kv_gib", [None, "3"])
def test_on_cpu_the_engine_never_sleeps(monkeypatch, kv_gib):
    if kv_gib is None:
        monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", kv_gib)
    cfg = _cfg("rollout.engine=vllm", on_gpu=False)
    cpu, native = plan(cfg, ALLOC, on_gpu=False), plan(dataclasses.replace(cfg, rollout=dataclasses.replace(
        cfg.rollout, engine="native")), ALLOC, on_gpu=False)
    extra = {k: v for k, v in cpu.resident.items() if k not in native.resident}
    # its weights + its KV cache: VLLM_CPU_KVCACHE_SPACE GiB, 1 unless set
    assert list(extra.values()) == [native.resident["policy weights"] + float(kv_gib or 1) * GiB]


def test_the_planner_refuses_a_pipeline_the_engine_cannot_serve():
    done = subprocess.run([sys.executable, "tools/plan_memory.py", "recipes/jbond_gemma2_27b.yaml", "rollout.engine=vllm",
                           "--nodes", "2", "--gpus-per-node", "8"], capture_output=True, text=True)
    assert done.returncode == 2 and "rollout.engine: vllm runs at pipeline size 1 (got pp=2)" in done.stderr
