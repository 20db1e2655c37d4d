"""Checkpoint keys that do not depend on the layer implementation.

Transformer Engine's spec fuses the pre-attention and pre-MLP RMSNorms into the next linear layer, so
their weights are named ``self_attention.linear_qkv.layer_norm_weight`` and
``mlp.linear_fc1.layer_norm_weight`` where the local spec has ``input_layernorm.weight`` and
``pre_mlp_layernorm.weight`` (same values: both store the zero-centred w of the (1 + w) scale). Every
sharded state dict this package saves or loads goes through ``canonical``, which renames the TE keys to
the local ones: a checkpoint written with one spec loads with the other, the HF mapping tables
(convert/gemma.py) need one set of names, and the layout-invariant init seeds both alike.
"""

from __future__ import annotations

from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

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
    """Rename, in place, the global keys of the TE-named tensors of a sharded state dict; returns it."""
    for value in nested_values(sharded_state_dict):
        if isinstance(value, (ShardedTensor, ShardedTensorFactory)):
            value.key = canonical_key(value.key)
    return sharded_state_dict
