"""Gemma 1, 2 and 3 (text) mapping tables. Note the trap: Gemma 1's ``post_attention_layernorm`` is the
norm *before* the MLP; in Gemma 2/3 it normalises the attention output and ``pre_feedforward_layernorm``
is the pre-MLP norm."""

from __future__ import annotations

from megatron_bond.config import ModelConfig
from megatron_bond.convert.mapping import Rule

L = "model.layers.{i}."
D = "decoder.layers.{i}."

_COMMON = (
    Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"),
    Rule(D + "input_layernorm.weight", (L + "input_layernorm.weight",)),
    Rule(D + "self_attention.linear_qkv.weight",
         (L + "self_attn.q_proj.weight", L + "self_attn.k_proj.weight", L + "self_attn.v_proj.weight"), "qkv"),
    Rule(D + "self_attention.linear_proj.weight", (L + "self_attn.o_proj.weight",)),
    Rule(D + "mlp.linear_fc1.weight", (L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"), "gate_up"),
    Rule(D + "mlp.linear_fc2.weight", (L + "mlp.down_proj.weight",)),
    Rule("decoder.final_layernorm.weight", ("model.norm.weight",)),
)

GEMMA = _COMMON + (
    Rule(D + "pre_mlp_layernorm.weight", (L + "post_attention_layernorm.weight",)),
)

GEMMA2 = _COMMON + (
    Rule(D + "self_attention.linear_proj.post_norm.weight", (L + "post_attention_layernorm.weight",)),
    Rule(D + "pre_mlp_layernorm.weight", (L + "pre_feedforward_layernorm.weight",)),
    Rule(D + "mlp.linear_fc2.post_norm.weight", (L + "post_feedforward_layernorm.weight",)),
)

GEMMA3 = GEMMA2 + (
    Rule(D + "self_attention.q_layernorm.weight", (L + "self_attn.q_norm.weight",)),
    Rule(D + "self_attention.k_layernorm.weight", (L + "self_attn.k_norm.weight",)),
)

TABLES = {"gemma": GEMMA, "gemma2": GEMMA2, "gemma3": GEMMA3}


def rules_for(m: ModelConfig) -> tuple[Rule, ...]:
    rules = TABLES[m.family]
    if not m.tie_embeddings:
        rules += (Rule("output_layer.weight", ("lm_head.weight",), "vocab"),)
    if m.reward_head:
        rules += (Rule("reward_head.weight", ("score.weight",)),)
    return rules
