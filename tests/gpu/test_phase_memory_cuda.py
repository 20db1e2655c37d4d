"""mem/peak_gib/<phase> on CUDA (megatron_bond/phases.py's PhaseClock): each phase's own peak, reset at
its start. Runs where CUDA exists (tests/gpu/device_checks.sh); on CPU the keys are absent
(tests/integration/test_run_outputs.py)."""

import pytest
import torch

from megatron_bond.phases import GiB, PhaseClock

pytestmark = pytest.mark.gpu


def test_each_phase_reports_its_own_peak():
    clock = PhaseClock(torch.device("cuda"))
    with clock.phase("rollout"):
        big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 0.25 GiB, freed in the phase
        del big
    with clock.phase("scoring"):
        small = torch.empty(2**20, dtype=torch.uint8, device="cuda")
        del small
    keys = clock.take()
    resident = torch.cuda.memory_allocated() / GiB
    assert keys["mem/peak_gib/rollout"] >= resident + 0.25 > keys["mem/peak_gib/scoring"], keys
    assert clock.take() == {}
