import pytest

from megatron_bond.config import ParallelConfig
from megatron_bond.runtime import DistributedSetupError, read_rendezvous
from megatron_bond.runtime import cpu_shim
from megatron_bond.runtime.distributed import check_layout, first_host


def test_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    rdv = read_rendezvous(env)
    assert (rdv.rank, rdv.world_size, rdv.local_rank, rdv.master_addr, rdv.master_port, rdv.source) == (
        3, 4, 1, "10.0.0.1", 29500, "torchrun")


def test_slurm_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "12345",
           "SLURM_JOB_NODELIST": "gpu[003-004]", "MASTER_ADDR": "gpu003"}
    rdv = read_rendezvous(env)
    assert (rdv.rank, rdv.world_size, rdv.local_rank, rdv.master_addr, rdv.source) == (5, 8, 1, "gpu003", "slurm")
    assert rdv.master_port == 20000 + 12345 % 20000


@pytest.mark.parametrize("nodelist, host", [
    ("node1", "node1"), ("gpu[003-005,9]", "gpu003"), ("gpu[7,9],cpu1", "gpu7"), ("a-b[01-02]", "a-b01"),
])
def test_first_host_of_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_no_launcher_is_a_single_local_process():
    rdv = read_rendezvous({})
    assert (rdv.rank, rdv.world_size, rdv.source) == (0, 1, "single")


@pytest.mark.parametrize("env, missing", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "missing LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "missing SLURM_LOCALID, SLURM_JOB_NODELIST"),
])
def test_missing_rendezvous_variables(env, missing):
    with pytest.raises(DistributedSetupError, match=missing):
        read_rendezvous(env)


def test_layout_must_divide_world():
    assert check_layout(ParallelConfig(tp=2, pp=2), 8) == 2
    with pytest.raises(DistributedSetupError, match="world size 6 is not divisible by tp\\*pp=2\\*2=4"):
        check_layout(ParallelConfig(tp=2, pp=2), 6)


def test_cpu_shim_refuses_unchecked_megatron_version(monkeypatch):
    monkeypatch.setattr(cpu_shim, "version", lambda name: "0.99.0")
    with pytest.raises(cpu_shim.UnsupportedMegatronVersion) as err:
        cpu_shim._check_version()
    assert "megatron-core 0.99.0 is not supported on CPU" in str(err.value)
    assert "install megatron-core==0.16.1" in str(err.value)


@pytest.mark.parametrize("addr, host", [("10.1.2.3", "10.1.2.3"), ("gpu003", "gpu003"), ("fd00::17", "[fd00::17]"),
                                        ("[fd00::17]", "[fd00::17]")])
def test_rendezvous_url_brackets_ipv6_literals(addr, host):
    from megatron_bond.runtime.distributed import tcp_host

    assert tcp_host(addr) == host
