"""torch.distributed + Megatron parallel state, from torchrun or Slurm variables.

``init_distributed`` is the one entry point: it finds the rendezvous (torchrun first, then Slurm, else a
single local process), checks the parallel layout against the world size before any group exists,
picks NCCL on CUDA and gloo on CPU, builds Megatron's TP/PP/DP groups and seeds every RNG.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch

from megatron_bond.config import ParallelConfig
from megatron_bond.runtime.cpu_shim import apply_cpu_shim


class DistributedSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Rendezvous:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm" or "single"


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


_TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_SLURM = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")


def _missing(env, names) -> list[str]:
    return [n for n in names if not env.get(n)]


def first_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise DistributedSetupError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _node_address(host: str) -> str:
    """The node's NodeAddr from Slurm (names need not resolve, e.g. several slurmd on one host)."""
    if shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "node", host], capture_output=True, text=True, check=False
        ).stdout
        found = re.search(r"NodeAddr=(\S+)", out)
        if found:
            return found.group(1)
    return host


def tcp_host(addr: str) -> str:
    """An address as the host part of a URL: an IPv6 literal (fd00::17) in brackets."""
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_rendezvous(env: dict[str, str] | None = None) -> Rendezvous:
    """Where this process sits: torchrun variables, else Slurm's, else a lone local process."""
    env = dict(os.environ if env is None else env)
    if any(n in env for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        missing = _missing(env, _TORCHRUN)
        if missing:
            raise DistributedSetupError(
                f"torchrun-style launch is missing {', '.join(missing)}: launch with torchrun, "
                "or set all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"
            )
        return Rendezvous(
            int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), "torchrun",
        )
    if "SLURM_PROCID" in env:
        missing = _missing(env, _SLURM)
        if missing:
            raise DistributedSetupError(
                f"Slurm launch is missing {', '.join(missing)}: start the ranks with srun"
            )
        addr = env.get("MASTER_ADDR") or _node_address(first_host(env["SLURM_JOB_NODELIST"]))
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return Rendezvous(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"]),
            addr, port, "slurm",
        )
    return Rendezvous(0, 1, 0, "127.0.0.1", _free_port(), "single")


def device_index(local_rank: int) -> int:
    """The CUDA device of the process with this local rank, under every Slurm binding: all of the node's
    GPUs visible (index = local rank) or one per task (CUDA_VISIBLE_DEVICES names one: index 0). The
    trainer and the vLLM worker (rollout/vllm_engine.py) both take it from here."""
    return local_rank % torch.cuda.device_count()


# NCCL settings read when a communicator is created, so set before the first process group:
# - NCCL_NVLS_ENABLE=0: NVLink SHARP buffers take 1.6-6 GB per GPU, which the memory planner does not count.
# - NCCL_CUMEM_ENABLE=0 with vLLM: vLLM's sleep mode allocates through its own CUDA memory pool, and NCCL's
#   cuMem allocations break it; vLLM sets this when it is imported, after the trainer's NCCL has started.
# A value the user exported wins (the recipe's launch environment asks otherwise).
NCCL_DEFAULTS = {"NCCL_NVLS_ENABLE": "0"}
NCCL_VLLM_DEFAULTS = {"NCCL_CUMEM_ENABLE": "0"}


def nccl_environment(engine: str, env=None) -> dict[str, str]:
    """Set, where unset, the NCCL variables a run with this rollout engine needs (before any process group
    exists); returns the ones set."""
    env = os.environ if env is None else env
    wanted = {**NCCL_DEFAULTS, **(NCCL_VLLM_DEFAULTS if engine == "vllm" else {})}
    added = {k: v for k, v in wanted.items() if k not in env}
    env.update(added)
    return added


def check_layout(parallel: ParallelConfig, world_size: int) -> int:
    """Data-parallel size for this layout, or a one-line error saying what to change."""
    mp = parallel.model_parallel_size()
    if world_size % mp:
        raise DistributedSetupError(
            f"world size {world_size} is not divisible by tp*pp={parallel.tp}*{parallel.pp}={mp}: "
            f"launch a multiple of {mp} ranks or change parallel.tp / parallel.pp"
        )
    return world_size // mp


def init_distributed(
    parallel: ParallelConfig, seed: int, timeout_minutes: int | None = None, env: dict[str, str] | None = None
) -> DistEnv:
    """Process groups from the launcher's environment. A collective that waits longer than
    ``timeout_minutes`` (default: $MEGATRON_BOND_TIMEOUT_MINUTES, else 30; long enough for one rank's
    Gemma-scale evaluation or checkpoint write) fails instead of hanging."""
    from megatron.core import parallel_state as ps

    if timeout_minutes is None:
        value = os.environ.get("MEGATRON_BOND_TIMEOUT_MINUTES", "30")
        if not value.isdigit() or int(value) < 1:
            raise DistributedSetupError(f"MEGATRON_BOND_TIMEOUT_MINUTES={value!r}: a whole number of minutes >= 1")
        timeout_minutes = int(value)
    rdv = read_rendezvous(env)
    dp = check_layout(parallel, rdv.world_size)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(device_index(rdv.local_rank))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        apply_cpu_shim()
        device = torch.device("cpu")
    backend = "nccl" if on_gpu else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend,
            init_method=f"tcp://{tcp_host(rdv.master_addr)}:{rdv.master_port}",
            rank=rdv.rank,
            world_size=rdv.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        distributed_timeout_minutes=timeout_minutes,
    )
    dist = DistEnv(
        rank=rdv.rank, world_size=rdv.world_size, local_rank=rdv.local_rank, device=device,
        backend=backend, tp=parallel.tp, pp=parallel.pp, dp=dp,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
    )
    seed_all(seed, dist)
    return dist


def seed_all(seed: int, dist: DistEnv) -> None:
    """Megatron's convention, plus one stream per data-parallel rank: the default generator differs per
    pipeline stage and DP rank (10007 > 100 · any PP size, so the offsets never collide) and is shared
    by the TP ranks of a model replica, as in Megatron; the model-parallel tracker gives each TP rank its
    own stream for sharded randomness. Nothing in a step draws from these: weights start from the
    layout-invariant init and samplers from seeds of (run.seed, step), so layouts still agree."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    stage_seed = seed + 100 * dist.pp_rank + 10007 * dist.dp_rank
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


_TEARDOWN: list = []


def on_teardown(fn) -> None:
    """Run ``fn()`` in destroy_distributed, before the groups go (an engine that holds groups of its own)."""
    _TEARDOWN.append(fn)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state as ps

    while _TEARDOWN:
        try:
            _TEARDOWN.pop()()
        except Exception as err:  # reported, not raised: the error being raised may be why we tear down
            print(f"teardown: {type(err).__name__}: {err}", file=sys.stderr)
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
