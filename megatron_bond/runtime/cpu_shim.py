"""Run megatron-core on a CUDA-less machine (tests, laptops): the only place Megatron is patched.

megatron-core assumes CUDA in a handful of calls that have nothing to do with the maths (buffer
devices, stream syncs, the CUDA RNG tracker, scalar flags created with ``device="cuda"``). On a machine
without CUDA each of those raises; here each gets its CPU twin. Nothing is patched when CUDA is present,
and the shim refuses megatron-core versions it was not checked against, because a patch that silently
stops applying would turn into wrong numbers or hangs.

Patches (upstream call -> CPU twin):
  torch.cuda.current_device()          -> torch.device("cpu")   (GlobalMemoryBuffer, TP gather buffers,
                                                                p2p shape exchange, checkpoint saver)
  torch.cuda.synchronize()             -> no-op                 (p2p_communication, dist_checkpointing)
  torch.cuda.{get,set}_rng_state,      -> the CPU default generator (CudaRNGStatesTracker.add/fork,
  torch.cuda.manual_seed                  model_parallel_cuda_manual_seed); torch.manual_seed is left
                                          alone because it calls torch.cuda.manual_seed_all itself
  the RNG tracker's CUDA state getter and setter -> CPU generator state (tracker.fork; the private
                                          names are in megatron_compat.CUDA_RNG_STATE_FUNCTIONS)
  torch.Tensor.cuda()                  -> the tensor itself     (LanguageModule tied embeddings at PP>1,
                                                                exchange_utils, broadcast_data)
  optimizer.clip_grad_by_total_norm_fp32 -> the same scaling without its CUDA-type assert
  ``device="cuda"`` in torch factory calls of the modules in _CUDA_LITERAL_MODULES -> CPU
                                          (schedules' total_num_tokens, get_default_causal_mask,
                                          optimizer flags, clip_grads, local_multi_tensor_l2_norm,
                                          checkpoint saver/exchange)
"""

from __future__ import annotations

import functools
import importlib
import warnings
from importlib.metadata import version

import torch

CHECKED_MEGATRON_CORE = ("0.16.1",)

_CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.transformer.utils",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.exchange_utils",
)
_FACTORIES = frozenset(
    {"zeros", "ones", "empty", "full", "tensor", "empty_like", "zeros_like", "ones_like", "arange"}
)

_applied = False


class UnsupportedMegatronVersion(RuntimeError):
    pass


def _is_cuda(device) -> bool:
    if isinstance(device, int):
        return True
    return device is not None and torch.device(device).type == "cuda"


def _on_cpu(factory, *args, **kwargs):
    if _is_cuda(kwargs.get("device")):
        kwargs["device"] = "cpu"
    return factory(*args, **kwargs)


class _TorchOnCpu:
    """`torch` as one Megatron module sees it: factory calls that ask for "cuda" get the CPU."""

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name in _FACTORIES:
            return functools.partial(_on_cpu, attr)
        return attr


def _cpu_rng_state(device="cuda", clone=False, graph_safe=False):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _clip_grads_by_total_norm(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """clip_grad_by_total_norm_fp32 without its ``grad.type() == 'torch.cuda.FloatTensor'`` assert."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _check_version() -> str:
    found = version("megatron-core")
    if found not in CHECKED_MEGATRON_CORE:
        raise UnsupportedMegatronVersion(
            f"megatron-core {found} is not supported on CPU: the CPU shim was checked against "
            f"{', '.join(CHECKED_MEGATRON_CORE)}; install megatron-core=={CHECKED_MEGATRON_CORE[-1]} "
            "or run on a CUDA machine"
        )
    return found


def apply_cpu_shim() -> bool:
    """Patch megatron-core for CPU if CUDA is absent; returns whether the shim is active."""
    global _applied
    if torch.cuda.is_available():
        return False
    if _applied:
        return True
    _check_version()

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self

    from megatron_bond.runtime.megatron_compat import CUDA_RNG_STATE_FUNCTIONS

    module, (getter, setter) = CUDA_RNG_STATE_FUNCTIONS
    random = importlib.import_module(module)
    setattr(random, getter, _cpu_rng_state)
    setattr(random, setter, _set_cpu_rng_state)

    optimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grads_by_total_norm

    proxy = _TorchOnCpu()
    for name in _CUDA_LITERAL_MODULES:
        importlib.import_module(name).torch = proxy
    # Advice to set CUDA_DEVICE_MAX_CONNECTIONS (TP > 1) means nothing without CUDA; on GPUs it stays
    warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS to 1 for maximum speedup.*")
    _applied = True
    return True
