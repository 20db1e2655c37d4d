"""Low-rank adapters on megatron-core's linears: y = W·x + (alpha/r)·B·(A·x), only A and B trainable.

Sharding follows each linear's tensor parallelism, so that no adapter needs a communication the base
linear does not already make (plus one of r values per token):
- column-parallel (``linear_qkv``, ``linear_fc1``: W split by output rows): A [r, in] is replicated and
  B [out, r] is a ColumnParallelLinear, split by rows exactly as W is (rank i holds B's rows of W's
  shard i, so W_i + s·B_i·A is rank i's shard of the merged weight). B's input A·x is identical on every
  rank; its backward all-reduces dL/d(A·x) over TP (megatron-core's column-parallel dgrad reduction), so
  A's gradient is whole and identical on every rank.
- row-parallel (``linear_proj``, ``linear_fc2``: W split by input columns, output all-reduced): A [r, in]
  is a RowParallelLinear, split by columns as W is (its r-wide output all-reduced), and B [out, r] is
  replicated; B's input and output gradient are identical on every rank, so is its gradient.
Replicated factors carry no ``tensor_model_parallel`` flag: the gradient norm counts them once (TP rank 0,
megatron-core's rule), checkpoints store them once. ``linear_fc1``'s B rows are [gate shard; up shard]
per rank, like its weight, and are checkpointed with the same SwiGLU factory, so adapters reshard across
TP like the base.

Everything outside the adapters is frozen (``requires_grad=False``): megatron-core's DDP and optimizer
take only the adapters, so only they get gradient buffers, fp32 masters, Adam moments and checkpoints.
``adapters_off`` runs the base alone: π_ref is the base with adapters off, no copy of any weight.
"""

from __future__ import annotations

import contextlib
import copy
import zlib

import torch
import torch.nn.functional as F
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, get_cuda_rng_tracker
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.utils import sharded_state_dict_default

from megatron_bond.config import Config
from megatron_bond.config.model import LORA_TARGETS
from megatron_bond.models.keys import canonical

ADAPTER = ".lora_"  # in the name of every adapter parameter and checkpoint key, and of nothing else


def is_adapter(name: str) -> bool:
    return ADAPTER in f".{name}"


def with_lora(linear_cls: type, parallel: str, rank: int, scale: float, dropout: float, gated: bool = False) -> type:
    """``linear_cls`` (a megatron-core column- or row-parallel linear, per ``parallel``) plus adapters of
    rank ``rank`` scaled by ``scale``; ``gated``: the output rows are [gate; up] (SwiGLU's fc1)."""

    class Lora(linear_cls):
        def __init__(self, input_size, output_size, *, config, init_method, **kwargs):
            super().__init__(input_size, output_size, config=config, init_method=init_method, **kwargs)
            tp_group = kwargs.get("tp_group")
            dtype = config.params_dtype
            device = self.weight.device
            # Initial values (A uniform, B zero: the model starts as the base) are set layout-invariantly by
            # init_adapters; these constructors' own init only fills the memory.
            if parallel == "column":
                self.lora_a = torch.nn.Linear(input_size, rank, bias=False, dtype=dtype, device=device)
                self.lora_b = ColumnParallelLinear(rank, output_size, config=config, init_method=torch.nn.init.zeros_,
                                                   bias=False, gather_output=False, tp_group=tp_group)
            else:
                self.lora_a = RowParallelLinear(input_size, rank, config=config, init_method=torch.nn.init.zeros_,
                                                bias=False, input_is_parallel=True, skip_bias_add=True, tp_group=tp_group)
                self.lora_b = torch.nn.Linear(rank, output_size, bias=False, dtype=dtype, device=device)
            self.lora_scale, self.lora_dropout, self.lora_on = scale, dropout, True

        def forward(self, x, *args, **kwargs):
            out, bias = super().forward(x, *args, **kwargs)
            if not self.lora_on:
                return out, bias
            if parallel == "column":  # x is whole on every rank: the same mask everywhere (default RNG)
                hidden = F.linear(F.dropout(x, self.lora_dropout, self.training), self.lora_a.weight)
                delta, _ = self.lora_b(hidden)
            else:  # x is this rank's shard of the features: masks from the model-parallel RNG
                with get_cuda_rng_tracker().fork():
                    x = F.dropout(x, self.lora_dropout, self.training)
                hidden, _ = self.lora_a(x)
                delta = F.linear(hidden, self.lora_b.weight)
            return out + self.lora_scale * delta, bias

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            # The base linear's own entries (it would call the adapters replicated), then the adapters'.
            out = {k: v for k, v in super().sharded_state_dict(prefix, sharded_offsets, metadata).items()
                   if not k.startswith(f"{prefix}lora_")}
            for name in ("lora_a", "lora_b"):
                # The tp group makes a replicated factor's main replica TP rank 0's (without it every rank's is).
                out.update(sharded_state_dict_default(getattr(self, name), f"{prefix}{name}.", sharded_offsets, metadata,
                                                      tp_group=self.tp_group))
            if gated:
                key = f"{prefix}lora_b.weight"
                out[key] = apply_swiglu_sharded_factory(out[key], sharded_offsets)
            return out

    Lora.__name__ = Lora.__qualname__ = f"Lora{linear_cls.__name__}"
    return Lora


def apply_lora(layer_spec, cfg: Config):
    """A copy of a (local) transformer-layer ModuleSpec whose target linears carry adapters."""
    lora = cfg.model.lora
    spec = copy.deepcopy(layer_spec)
    places = {"linear_qkv": spec.submodules.self_attention.submodules, "linear_proj": spec.submodules.self_attention.submodules,
              "linear_fc1": spec.submodules.mlp.submodules, "linear_fc2": spec.submodules.mlp.submodules}
    for target in lora.targets:
        holder = places[target]
        cls = with_lora(getattr(holder, target), LORA_TARGETS[target], lora.rank, lora.scale, lora.dropout,
                        gated=target == "linear_fc1")  # every family here has a gated MLP
        setattr(holder, target, cls)
    return spec


def adapter_modules(chunks):
    """The adapted linears of model chunks (DDP-wrapped or not)."""
    return [m for c in chunks for m in c.modules() if hasattr(m, "lora_on")]


def freeze_base(chunks) -> None:
    """Only adapters train: everything else keeps requires_grad=False (no gradient, optimizer state or
    checkpoint)."""
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            param.requires_grad_(is_adapter(name))


@contextlib.contextmanager
def adapters_off(chunks):
    """Within the block the chunks compute the base model alone (π_ref)."""
    modules = adapter_modules(chunks)
    for m in modules:
        m.lora_on = False
    try:
        yield chunks
    finally:
        for m in modules:
            m.lora_on = True


@torch.no_grad()
def init_adapters(chunks, seed: int) -> None:
    """A ~ U(±1/sqrt(in)) (the bound of torch's default Linear init, as PEFT's kaiming init), B = 0, per
    global checkpoint key: the same adapters at any TP/PP, and a model equal to its base."""
    for chunk in chunks:
        sd = canonical(chunk.sharded_state_dict())
        apply_factories(sd)
        for sh in nested_values(sd):
            if not isinstance(sh, ShardedTensor) or not is_adapter(sh.key):
                continue
            if sh.key.endswith("lora_b.weight"):
                sh.data.zero_()
                continue
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(sh.key.encode()))
            bound = sh.global_shape[-1] ** -0.5
            full = (torch.rand(sh.global_shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            sh.data.copy_(full[sh.global_slice()].reshape(sh.data.shape))


def share_base(chunks, policy_chunks) -> None:
    """Make ``chunks`` (a second model of the same layout: the anchor) compute with the policy's base
    tensors: one copy of the base on the device, whatever number of adapter sets."""
    from_policy = [dict(c.named_parameters()) for c in policy_chunks]
    for chunk, theirs in zip(chunks, from_policy):
        for name, param in chunk.named_parameters():
            if not is_adapter(name):
                param.data = theirs[name].data
