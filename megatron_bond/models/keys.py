"""Checkpoint keys that do not depend on the layer implementation.

Transformer Engine's spec fuses the pre-attention and pre-MLP RMSNorms into the next linear layer, so
their weights are named ``self_attention.linear_qkv.layer_norm_weight`` and
``mlp.linear_fc1.layer_norm_weight`` where the local spec has ``input_layernorm.weight`` and
``pre_mlp_layernorm.weight`` (same values: both store the zero-centred w of the (1 + w) scale). Every
sharded state dict this package saves or loads goes through ``canonical``, which renames the TE keys to
the local ones: a checkpoint written with one spec loads with the other, the HF mapping tables
(convert/gemma.py) need one set of names, and the layout-invariant init seeds both alike.

``canonical`` also drops every ``*._extra_state`` entry, deliberately, on save and on load: a module's
extra state is Transformer Engine's FP8 metadata (scales, amax history; empty in the bf16 / fp32 runs
this package trains) or, in megatron-core's local linears, None. Which modules carry it depends on the
spec and on the megatron-core / TE release (TE's core attention and norms do, the local ones do not), so
a checkpoint that kept them would load only into a model built like the one that wrote it.
``load_module_state`` gives each module its own freshly built extra state instead.
"""

from __future__ import annotations

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

EXTRA_STATE = "_extra_state"
TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def canonical_key(key: str) -> str:
    for te, local in TE_TO_LOCAL.items():
        if key.endswith(te):
            return key[: -len(te)] + local
    return key


def canonical(sharded_state_dict: dict) -> dict:
    """Drop, in place, the extra-state entries of a sharded state dict and rename the global keys of its
    TE-named tensors; returns it."""
    _drop_extra_state(sharded_state_dict)
    for value in nested_values(sharded_state_dict):
        if isinstance(value, (ShardedTensor, ShardedTensorFactory)):
            value.key = canonical_key(value.key)
    return sharded_state_dict


def _drop_extra_state(tree: dict) -> None:
    for key in list(tree):
        if isinstance(tree[key], dict):
            _drop_extra_state(tree[key])
        elif str(key).endswith(EXTRA_STATE):
            del tree[key]


def load_module_state(module: torch.nn.Module, state: dict) -> None:
    """``module.load_state_dict(state)`` (strict) for a state loaded through ``canonical``: the extra-state
    entries it dropped are the module's own, as built."""
    own = {k: v for k, v in module.state_dict().items() if k.endswith(EXTRA_STATE)}
    module.load_state_dict({**own, **state})
