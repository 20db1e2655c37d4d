"""slurm/jbond_gemma.sh's branches a GPU-less CI cannot run for real, driven with stub `srun` and
`scontrol` on a fake allocation: 2 nodes × 8 GPUs in a pyxis container, on a batch host with no
`python` at all, NodeAddr an IP literal without a host entry (and IPv6); and a CPU allocation with the
same NodeAddr. Each run must reach the training launch with the rendezvous address, the allocation's one
task per GPU and the GPU environment; a bad override must end the job with megatron-bond's one line.
(The real local cluster runs the CPU branch end to end: test_slurm.py.)"""

import os
import stat
import subprocess
import sys

import pytest

from tests.harness import ROOT

JOB_ID = 4242
IMAGE = "nvcr.io#nvidia/pytorch:25.01-py3"
SRUN = r"""#!/bin/bash
# Stub srun: records each call (its options, its command, the environment it would pass on); runs
# `megatron_bond.cli config` for real, with the container's python standing in for `python`.
{
  echo "CALL"
  for a in "$@"; do echo "ARG $a"; done
  env | grep -E '^(MASTER_ADDR|MASTER_PORT|CUDA_DEVICE_MAX_CONNECTIONS|TORCH_NCCL_ASYNC_ERROR_HANDLING|NCCL_DEBUG|NCCL_NVLS_ENABLE|NCCL_CUMEM_ENABLE|NCCL_SOCKET_IFNAME|GLOO_SOCKET_IFNAME|OMP_NUM_THREADS|MEGATRON_BOND_TIMEOUT_MINUTES|PYTHONPATH)=' | sed 's/^/ENV /'
} >> "$STUB_LOG"
while [[ "$1" == --* ]]; do shift; done
if [[ "$2 $3 $4" == "-m megatron_bond.cli config" ]]; then
  [[ "$1" == python ]] || { echo "srun stub: expected the container's python, got $1" >&2; exit 127; }
  shift
  exec "$CONTAINER_PYTHON" "$@"
fi
exit 0
"""
SCONTROL = r"""#!/bin/bash
case "$1 $2" in
  "show hostnames") printf 'gpu-a\ngpu-b\n' ;;
  "show node") echo "NodeName=$3 Arch=x86_64 CoresPerSocket=48 NodeAddr=$STUB_NODE_ADDR NodeHostName=$3 Version=24.05" ;;
  *) echo "scontrol stub: $*" >> "$STUB_LOG" ;;
esac
"""
NO_PYTHON = "#!/bin/bash\necho \"$0: command not found\" >&2\nexit 127\n"


def _stubs(root):
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL), ("python", NO_PYTHON), ("python3", NO_PYTHON)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    return bin_dir


def run_script(tmp_path, gpus: int, node_addr: str, container: bool = True, overrides: str = "", extra_env=None):
    bin_dir = _stubs(tmp_path)
    log = tmp_path / "srun.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_LOG": str(log), "STUB_NODE_ADDR": node_addr,
        "CONTAINER_PYTHON": sys.executable, "RUN_DIR": str(tmp_path / "run"), "OVERRIDES": overrides,
        "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": str(JOB_ID), "SLURM_JOB_NAME": "jbond-gemma",
        "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": str(2 * max(gpus, 1)), "SLURM_NTASKS_PER_NODE": str(max(gpus, 1)),
        **({"SLURM_GPUS_ON_NODE": str(gpus)} if gpus else {}),
        **({"CONTAINER_IMAGE": IMAGE} if container else {}),
        **(extra_env or {}),
    }
    done = subprocess.run(["/bin/bash", str(ROOT / "slurm" / "jbond_gemma.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line == "CALL":
            calls.append({"args": [], "env": {}})
        elif line.startswith("ARG "):
            calls[-1]["args"].append(line[4:])
        elif line.startswith("ENV "):
            key, _, value = line[4:].partition("=")
            calls[-1]["env"][key] = value
    return done, calls


def _train_call(calls):
    (train,) = [c for c in calls if "train" in c["args"] and "megatron_bond.cli" in c["args"]]
    return train


@pytest.mark.parametrize("node_addr", ["10.11.12.13", "fd00::17"])
def test_gpu_branch_in_a_container_reaches_the_launch(tmp_path, node_addr):
    done, calls = run_script(tmp_path, gpus=8, node_addr=node_addr)
    assert done.returncode == 0, done.stdout + done.stderr
    train = _train_call(calls)
    assert f"--container-image={IMAGE}" in train["args"]
    cmd = train["args"][train["args"].index("python"):]  # the container's python, not the host's .venv
    assert cmd[:4] == ["python", "-m", "megatron_bond.cli", "train"] and cmd[4] == "recipes/jbond_gemma_7b.yaml"
    assert cmd[-1] == f"run.output_dir={tmp_path / 'run'}"
    assert not any(a.startswith(("--ntasks", "--nodes", "--gpus")) for a in train["args"])  # the allocation's 8 per node
    env = train["env"]
    assert env["MASTER_ADDR"] == node_addr and env["MASTER_PORT"] == str(20000 + JOB_ID % 20000)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"  # the 7B recipe runs at TP=4
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["MEGATRON_BOND_TIMEOUT_MINUTES"] == "30"
    log = (tmp_path / "run" / "logs" / f"job-{JOB_ID}.log").read_text()
    assert f"16 tasks, 8 GPU(s) per node; rendezvous {node_addr} port {20000 + JOB_ID}" in log


def test_gpu_branch_at_tp1_leaves_cuda_connections_alone(tmp_path):
    done, calls = run_script(tmp_path, gpus=8, node_addr="10.11.12.13", overrides="parallel.tp=1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in _train_call(calls)["env"]


def test_a_bad_override_ends_the_job_with_one_line_and_launches_nothing(tmp_path):
    done, calls = run_script(tmp_path, gpus=8, node_addr="10.11.12.13", overrides="train.steps=many")
    assert done.returncode == 2
    log = (tmp_path / "run" / "logs" / f"job-{JOB_ID}.log").read_text()
    assert "megatron-bond: config: train.steps: expected int, got 'many'" in log and "Traceback" not in log
    assert not [c for c in calls if "train" in c["args"]]


def test_cpu_branch_with_the_same_node_address(tmp_path):
    done, calls = run_script(tmp_path, gpus=0, node_addr="10.11.12.13", container=False)
    assert done.returncode == 0, done.stdout + done.stderr
    train = _train_call(calls)
    cmd = train["args"][next(i for i, a in enumerate(train["args"]) if not a.startswith("--")):]
    assert cmd[0] == str(ROOT / ".venv" / "bin" / "python") or cmd[0] == "python3"
    assert cmd[1:5] == ["-m", "megatron_bond.cli", "train", "recipes/tiny_cpu.yaml"]
    env = train["env"]
    assert env["MASTER_ADDR"] == "10.11.12.13" and "CUDA_DEVICE_MAX_CONNECTIONS" not in env
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in env
    assert os.path.isdir(tmp_path / "run" / "logs")


def test_header_takes_whole_nodes_and_their_memory():
    header = [line for line in (ROOT / "slurm" / "jbond_gemma.sh").read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --exclusive" in header and "#SBATCH --mem=0" in header


@pytest.mark.parametrize("engine, cumem", [("native", None), ("vllm", "0")])
def test_gpu_branch_sets_nccl_before_the_launch_and_passes_the_interface_on(tmp_path, engine, cumem):
    """NVLS off (its buffers are not in the memory plan), cuMem off with vLLM (its sleep-mode pool), both
    in the environment of the training srun, before any process group; one interface named for NCCL
    reaches gloo too (vLLM's data-parallel replicas talk over gloo)."""
    done, calls = run_script(tmp_path, gpus=8, node_addr="10.11.12.13",
                             overrides=f"rollout.engine={engine} policy.ckpt=ckpt/7b",
                             extra_env={"NCCL_SOCKET_IFNAME": "ib0"})
    assert done.returncode == 0, done.stdout + done.stderr
    env = _train_call(calls)["env"]
    assert env["NCCL_NVLS_ENABLE"] == "0" and env.get("NCCL_CUMEM_ENABLE") == cumem
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "ib0"
