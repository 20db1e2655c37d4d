"""PhaseClock reports, beside the allocator's peak, the device-level used memory of each phase (what
vLLM's pool, NCCL and the CUDA context hold outside PyTorch's allocator); CUDA stubbed."""

import torch

from megatron_bond.phases import GiB, PhaseClock


def test_device_used_memory_beside_the_allocator_peak(monkeypatch):
    state = {"allocated": 0, "peak": 0, "outside": 0}

    def alloc(n, outside=0):
        state["allocated"] += n
        state["peak"] = max(state["peak"], state["allocated"])
        state["outside"] += outside

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: state.update(peak=state["allocated"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: state["peak"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (80 * GiB - state["allocated"] - state["outside"], 80 * GiB))
    clock = PhaseClock(torch.device("cuda"))
    with clock.phase("rollout"):
        alloc(2 * GiB, outside=20 * GiB)  # vLLM awake: its pool is not the allocator's
    alloc(-2 * GiB, outside=-20 * GiB)  # released: vLLM sleeps between the phases
    with clock.phase("train"):
        alloc(10 * GiB)
        alloc(-4 * GiB)
    got = clock.take()
    assert got == {"mem/peak_gib/rollout": 2.0, "mem/peak_gib/train": 10.0,
                   "mem/device_used_gib/rollout": 22.0, "mem/device_used_gib/train": 6.0}
    assert clock.take() == {}
