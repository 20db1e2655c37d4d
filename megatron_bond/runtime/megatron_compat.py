"""Every use of a private megatron-core (or torch) name, in one module, checked against the versions
it was verified with when it is imported, on every platform.

GPU containers run newer megatron-core (on Python >= 3.12) than this project's CI can install, and pip
picks the newest for ``megatron-core>=0.16.1``: an unverified version is refused in one line on every
platform (constraints/gpu.txt pins the verified GPU set), unless ``MEGATRON_BOND_UNVERIFIED_MEGATRON_CORE=1``
accepts the risk (then one warning); the hooks below are where to look first when something breaks. (On
CPU, runtime/cpu_shim.py patches megatron-core and refuses versions it was not checked against whatever
the override says; its patches are CPU-only and stay there.)

- ``PostprocessHookGPTModel``: GPTModel's last-stage ``_postprocess``, as a public ``postprocess`` hook.
- ``RotatedCacheSelfAttention``: ``SelfAttention._adjust_key_value_for_inference`` and its 6-tuple:
  the static KV cache holds keys already rotated.
- ``LeftPaddedContext`` / ``advance_static_context``: ``StaticInferenceContext`` and its
  ``sequence_len_offset``, ``max_batch_size`` and ``key_value_memory_dict``.
- ``optimizer_masters``: the optimizers' fp32 master groups and the distributed optimizer's
  ``_get_model_param_range_map``.
- ``prime_adam_state``: torch Adam's per-parameter state entries.
- ``flatten`` / ``unflatten``: ``torch._utils._(un)flatten_dense_tensors``.
- ``CUDA_RNG_STATE_FUNCTIONS``: the RNG tracker's private state functions, which runtime/cpu_shim.py
  replaces on a CUDA-less machine (it patches; this module names).
"""

from __future__ import annotations

import os
import warnings
from importlib.metadata import version

import torch
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.attention import SelfAttention
from torch import Tensor

from megatron_bond.config import ConfigError

VERIFIED_MEGATRON_CORE = ("0.16.1",)
# (module, (getter, setter)): CudaRNGStatesTracker.fork reads and writes the CUDA generator through these.
CUDA_RNG_STATE_FUNCTIONS = ("megatron.core.tensor_parallel.random", ("_get_cuda_rng_state", "_set_cuda_rng_state"))


ACCEPT_UNVERIFIED = "MEGATRON_BOND_UNVERIFIED_MEGATRON_CORE"


def check_version(env=None) -> bool:
    """True for a verified megatron-core; an unverified one is refused (ConfigError: one line from the
    CLI), or with ACCEPT_UNVERIFIED=1 gets one warning and False (the hooks may no longer fit)."""
    found = version("megatron-core")
    if found in VERIFIED_MEGATRON_CORE:
        return True
    verified = ", ".join(VERIFIED_MEGATRON_CORE)
    if (os.environ if env is None else env).get(ACCEPT_UNVERIFIED) != "1":
        raise ConfigError(f"megatron-core {found} is not verified (verified: {verified}): install "
                          f"megatron-core=={VERIFIED_MEGATRON_CORE[-1]} (pip install -c constraints/gpu.txt ...), "
                          f"or set {ACCEPT_UNVERIFIED}=1 to run it at your own risk")
    warnings.warn(f"megatron-bond: megatron-core {found} is not verified (verified: {verified}); "
                  "its private hooks are in megatron_bond/runtime/megatron_compat.py", stacklevel=2)
    return False


check_version()


class PostprocessHookGPTModel(GPTModel):
    """GPTModel whose last-stage postprocessing goes through ``postprocess(hidden_states, default,
    kwargs)``; ``default()`` is megatron-core's own (logits, loss)."""

    def _postprocess(self, hidden_states, *args, **kwargs):
        return self.postprocess(hidden_states, lambda: super(PostprocessHookGPTModel, self)._postprocess(
            hidden_states, *args, **kwargs), kwargs)

    def postprocess(self, hidden_states, default, kwargs):
        return default()


class RotatedCacheSelfAttention(SelfAttention):
    def _adjust_key_value_for_inference(self, inference_context, query, key, value, rotary_pos_emb,
                                        *args, **kwargs):
        """With a static KV cache, rotate the new queries and keys here, in one call, and cache the
        keys rotated; forward() then rotates nothing (Megatron's own contract when this returns no
        rotary embedding). Megatron's static path caches unrotated keys and rotates the whole cache
        again at every decode step."""
        if (inference_context is None or not inference_context.is_static_batching()
                or rotary_pos_emb is None or self.config.flash_decode):
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        # Self-attention: queries and keys share positions, so one embedding rotates both.
        pos_emb = rotary_pos_emb[0] if isinstance(rotary_pos_emb, tuple) else rotary_pos_emb
        new = slice(inference_context.sequence_len_offset, inference_context.sequence_len_offset + key.size(0))
        rotated = apply_rotary_pos_emb(torch.cat([query, key], dim=2), pos_emb[new],
                                       config=self.config, cp_group=self.pg_collection.cp)
        query, key = rotated.split([query.size(2), key.size(2)], dim=2)
        query, key, value, _, mask_type, block_table = super()._adjust_key_value_for_inference(
            inference_context, query, key, value, None, *args, **kwargs)
        return query, key, value, None, mask_type, block_table


class LeftPaddedContext(StaticInferenceContext):
    """A static KV cache whose rows are left-padded to one length: the first pad[r] slots of row r
    (``pad`` [rows], int64) are padding, which the caller's attention mask hides. Slots serve as
    positions: RoPE depends only on the distance between a query and a key, which a row's shift by its
    padding leaves unchanged (sliding windows too, in slots)."""

    def __init__(self, pad: Tensor, max_sequence_length: int):
        super().__init__(len(pad), max_sequence_length)
        self.pad = pad

    def fork(self, n: int) -> None:
        """Each cached row becomes n consecutive rows (the prefix of a prompt's n samples), on every
        layer this stage holds; the context then serves n times the batch."""
        for layer, (key, value) in self.key_value_memory_dict.items():
            self.key_value_memory_dict[layer] = (key.repeat_interleave(n, dim=1), value.repeat_interleave(n, dim=1))
        self.pad = self.pad.repeat_interleave(n)
        self.max_batch_size *= n


def advance_static_context(context, tokens: int) -> None:
    """Tell a StaticInferenceContext that ``tokens`` more positions are cached."""
    context.sequence_len_offset += tokens


def optimizer_masters(optimizer) -> list[tuple[Tensor, Tensor, slice | None]]:
    """(model parameter, its fp32 master, the slice of the flattened parameter the master covers or
    None for all of it), for every parameter this rank's optimizer updates."""
    out = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "shard_fp32_from_float16_groups"):  # DistributedOptimizer: shards of the masters
            pairs = [*zip(opt.model_float16_groups, opt.shard_fp32_from_float16_groups),
                     *zip(opt.model_fp32_groups, opt.shard_fp32_groups)]
            for model_group, shard_group in pairs:
                for param, shard in zip(model_group, shard_group):
                    span = opt._get_model_param_range_map(param)["param"]
                    out.append((param, shard, slice(span.start, span.end)))
        elif hasattr(opt, "fp32_from_float16_groups"):  # Float16OptimizerWithFloat16Params
            for model_group, master_group in zip(opt.float16_groups, opt.fp32_from_float16_groups):
                out += [(param, master, None) for param, master in zip(model_group, master_group)]
            out += [(param, param, None) for group in opt.fp32_from_fp32_groups for param in group]
        else:  # FP32Optimizer: the parameters are their own masters
            out += [(param, param, None) for group in opt.optimizer.param_groups for param in group["params"]]
    return out


def prime_adam_state(optimizer) -> None:
    """Zero moments and step 0 for every parameter whose torch Adam state is still empty, for the load
    to overwrite. Without apex or TE, megatron-core runs torch's AdamW, and its DistributedOptimizer's
    state_dict() (called to build the load template) needs a step in every state entry, which a fresh
    optimizer has none of (seen on an H200)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue  # apex's / TE's fused Adam: megatron-core reads their step another way
        for group in inner.param_groups:
            on_device = group.get("capturable") or group.get("fused")
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p].update(step=torch.zeros((), device=p.device if on_device else "cpu"),
                                          exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))


def flatten(tensors: list[Tensor]) -> Tensor:
    return torch._utils._flatten_dense_tensors(tensors)


def unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    return torch._utils._unflatten_dense_tensors(flat, like)
