"""The phases of a training step, by one name each: the memory planner plans the peak of each, and the
run's per-phase metrics (timings, CUDA peak memory) use the same names."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

PHASES = ("rollout", "scoring", "train", "eval", "checkpoint_save", "checkpoint_load")
GiB = 2**30


class PhaseClock:
    """Seconds of each phase and, on CUDA, its peak of allocated memory (the allocator's peak is reset at
    the phase's start, so each phase's figure is its own) and the device's used memory at its start and
    end (``torch.cuda.mem_get_info``: everything on the GPU, vLLM's own pool, NCCL's buffers and the CUDA
    context included, which PyTorch's allocator does not see; sampled, not a peak). Each phase is also a
    profiler range named ``phase:<name>``, which is how tests measure a phase's live tensor bytes on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self.device_bytes: dict[str, int] = {}
        self.listener = None  # called with each phase's name at its start (the progress bar)

    @contextmanager
    def phase(self, name: str):
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}: one of {PHASES}")
        if self.listener is not None:
            self.listener(name)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()  # allocations are host-side events: no sync needed first
            self._device_used(name)
        with self.span(name), torch.profiler.record_function(f"phase:{name}"):
            yield
        if self.cuda:  # the span synchronised on its way out
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), torch.cuda.max_memory_allocated())
            self._device_used(name)

    def _device_used(self, name: str) -> None:
        free, total = torch.cuda.mem_get_info()
        self.device_bytes[name] = max(self.device_bytes.get(name, 0), total - free)

    @contextmanager
    def span(self, name: str):
        """Seconds of a phase, or of a part of one (``time/<name>`` in the step's row), synchronised on
        CUDA; a part has no memory peak of its own (its phase's peak covers it)."""
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """``mem/peak_gib/<phase>`` (the allocator's peak) and ``mem/device_used_gib/<phase>`` (the device's)
        for the phases since the last call (CUDA only; nothing on CPU), then forget them; a checkpoint's
        phases show in the next row."""
        out = {f"mem/peak_gib/{k}": v / GiB for k, v in self.peak_bytes.items()}
        out.update({f"mem/device_used_gib/{k}": v / GiB for k, v in self.device_bytes.items()})
        self.peak_bytes.clear()
        self.device_bytes.clear()
        self.seconds.clear()
        return out
