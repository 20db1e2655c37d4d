"""Rank body for the mapping-table coverage check: build each family's model with the local spec."""

from __future__ import annotations

from megatron_bond.config import Config, ModelConfig, ParallelConfig
from megatron_bond.runtime import destroy_distributed, init_distributed

FAMILIES = {
    "gemma": dict(family="gemma", activation="gelu_tanh", zero_centered_norm=True, scale_embeddings=True),
    "gemma2": dict(family="gemma2", activation="gelu_tanh", zero_centered_norm=True, scale_embeddings=True,
                   post_norms=True, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                   attn_logit_softcap=50.0, final_logit_softcap=30.0),
    "gemma3": dict(family="gemma3", activation="gelu_tanh", zero_centered_norm=True, scale_embeddings=True,
                   post_norms=True, qk_norm=True, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                   rope_local_theta=100.0),
}


def keys_per_family() -> dict:
    """{family (and family + "_reward"): (the local model's parameter names, its sharded keys)}."""
    from megatron_bond.models.gpt import build_model
    from megatron_bond.models.layout import sharded_tensors

    init_distributed(ParallelConfig(), seed=0)
    try:
        out = {}
        for name, fields in FAMILIES.items():
            for reward in (False, True):
                m = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                                num_query_groups=2, kv_channels=8, vocab_size=128, reward_head=reward,
                                transformer_impl="local", **fields)
                (model,) = build_model(Config(model=m).validate())
                params = {k for k, v in model.state_dict(keep_vars=True).items() if hasattr(v, "grad")}
                out[name + ("_reward" if reward else "")] = (params, {s.key for s in sharded_tensors([model])})
        return out
    finally:
        destroy_distributed()


def bf16_reward_scores() -> dict:
    """A bf16 Gemma 2 reward model's scores, and the same scores computed here in fp32 from the input its
    final norm received (captured by a hook): the norm and the scalar head must not round to bf16."""
    import torch
    import torch.nn.functional as F

    from megatron_bond.models.gpt import build_model

    init_distributed(ParallelConfig(), seed=0)
    try:
        m = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        kv_channels=8, vocab_size=128, reward_head=True, params_dtype="bfloat16",
                        transformer_impl="local", **FAMILIES["gemma2"])
        (model,) = build_model(Config(model=m).validate())
        model.eval()
        with torch.no_grad():
            for p in model.parameters():  # norms and head away from their init, scores of order 1
                p.add_(torch.randn_like(p) * 0.3)
        seen = {}
        norm = model.decoder.final_layernorm
        norm.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], out_dtype=out.dtype))
        tokens = torch.randint(1, 128, (3, 7), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(7).expand(3, 7)
        with torch.no_grad():
            scores = model(tokens, positions, None)
            x = seen["x"].float()
            normed = F.rms_norm(x, x.shape[-1:], 1.0 + norm.weight.float(), norm.eps)
            ref = (normed @ model.reward_head.weight.float().T).squeeze(-1).transpose(0, 1)
        return {"scores": scores, "ref": ref, "norm_out_dtype": seen["out_dtype"], "x_dtype": seen["x"].dtype}
    finally:
        destroy_distributed()
