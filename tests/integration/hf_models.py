"""Tiny random Hugging Face Gemma models, built from configs (no downloads), for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 251  # odd, so not divisible by TP=2: Megatron pads it to 256 and the second shard ends in padding

VARIANTS = {
    # name: (model class name, config class name, overrides)
    "gemma_mqa": ("GemmaForCausalLM", "GemmaConfig", {"num_key_value_heads": 1}),
    "gemma_mha": ("GemmaForCausalLM", "GemmaConfig", {"num_key_value_heads": 4}),
    "gemma2_gqa": ("Gemma2ForCausalLM", "Gemma2Config", {"num_key_value_heads": 2, "sliding_window": 6,
                                                         "final_logit_softcapping": 3.0, "attn_logit_softcapping": 1.0,
                                                         "query_pre_attn_scalar": 24}),
    "gemma3_gqa": ("Gemma3ForCausalLM", "Gemma3TextConfig", {"num_key_value_heads": 2, "sliding_window": 6,
                                                             "sliding_window_pattern": 2, "query_pre_attn_scalar": 24,
                                                             "rope_local_base_freq": 100.0,
                                                             "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "gemma2_reward": ("Gemma2ForSequenceClassification", "Gemma2Config", {"num_key_value_heads": 2, "sliding_window": 6,
                                                                         "num_labels": 1, "attn_logit_softcapping": 1.0}),
    # Layer counts that do not split evenly over PP=2 (as Gemma 2B's 18 over 4, 27B's 46 over 4).
    "gemma2_3layers": ("Gemma2ForCausalLM", "Gemma2Config", {"num_hidden_layers": 3, "num_key_value_heads": 2,
                                                             "sliding_window": 6, "final_logit_softcapping": 3.0,
                                                             "attn_logit_softcapping": 1.0, "query_pre_attn_scalar": 24}),
    "gemma3_5layers": ("Gemma3ForCausalLM", "Gemma3TextConfig", {"num_hidden_layers": 5, "num_key_value_heads": 2,
                                                                 "sliding_window": 6, "sliding_window_pattern": 2,
                                                                 "query_pre_attn_scalar": 24, "rope_local_base_freq": 100.0}),
    "gemma2_reward_3layers": ("Gemma2ForSequenceClassification", "Gemma2Config", {
        "num_hidden_layers": 3, "num_key_value_heads": 2, "sliding_window": 6, "num_labels": 1,
        "attn_logit_softcapping": 1.0}),
    # As Gemma 3 4B/12B/27B are released: a multimodal model whose language model is converted alone.
    "gemma3_multimodal": ("Gemma3ForConditionalGeneration", "Gemma3TextConfig", {
        "num_key_value_heads": 2, "sliding_window": 6, "sliding_window_pattern": 2, "query_pre_attn_scalar": 24,
        "rope_local_base_freq": 100.0}),
    "gemma3_multimodal_reward": ("Gemma3ForSequenceClassification", "Gemma3TextConfig", {
        "num_key_value_heads": 2, "sliding_window": 6, "sliding_window_pattern": 2, "query_pre_attn_scalar": 24,
        "rope_local_base_freq": 100.0, "num_labels": 1}),
}
# Long sequences (tests/integration/test_long_attention.py): 4096 tokens, windows far shorter.
VARIANTS["gemma2_long"] = ("Gemma2ForCausalLM", "Gemma2Config", {
    "num_hidden_layers": 2, "num_key_value_heads": 2, "sliding_window": 1000, "final_logit_softcapping": 3.0,
    "attn_logit_softcapping": 1.0, "query_pre_attn_scalar": 24, "max_position_embeddings": 4096})
VARIANTS["gemma3_long"] = ("Gemma3ForCausalLM", "Gemma3TextConfig", {
    "num_hidden_layers": 2, "num_key_value_heads": 2, "sliding_window": 1000, "sliding_window_pattern": 2,
    "query_pre_attn_scalar": 24, "rope_local_base_freq": 100.0, "max_position_embeddings": 4096})
# vLLM's CPU attention needs head_dim >= 32 (the vLLM engine's tests): the Gemma 1/2/3 variants at 32.
for _name in ("gemma_mqa", "gemma2_gqa", "gemma3_gqa"):
    _cls, _config, _overrides = VARIANTS[_name]
    VARIANTS[f"{_name}_hd32"] = (_cls, _config, {**_overrides, "head_dim": 32})
MULTIMODAL = ("Gemma3ForConditionalGeneration", "Gemma3ForSequenceClassification")


def _as_released(out_dir: Path) -> None:
    """Rewrite a multimodal Gemma 3's text_config as the releases store it (written by transformers
    4.50): only what differs from Gemma3TextConfig's defaults, RoPE as rope_local_base_freq / rope_theta
    / rope_scaling, sliding_window_pattern instead of layer_types. The full-attention rope_theta (1e6),
    the token ids and the norm epsilon are left to the defaults, as in the 27B release."""
    import json

    import transformers

    path = Path(out_dir) / "config.json"
    config = json.loads(path.read_text())
    text, defaults = config["text_config"], transformers.Gemma3TextConfig().to_dict()
    rope = text.pop("rope_parameters")
    sparse = {k: v for k, v in text.items()
              if not k.startswith("_") and k not in ("layer_types", "dtype") and defaults.get(k, object()) != v}
    sparse["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    full = rope["full_attention"]
    assert full["rope_theta"] == 1e6  # left to the default
    if full.get("rope_type", "default") != "default":
        sparse["rope_scaling"] = {"rope_type": full["rope_type"], "factor": full["factor"]}
    config["text_config"] = sparse
    path.write_text(json.dumps(config, indent=2))


def build_hf_model(variant: str, out_dir: Path, seed: int = 0):
    import transformers

    model_cls, config_cls, overrides = VARIANTS[variant]
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                  num_attention_heads=4, head_dim=12, max_position_embeddings=64, pad_token_id=0,
                  torch_dtype="float32",
                  # Gemma 2's attention softcap exists only in the eager path: transformers up to at
                  # least 5.17 defaults to SDPA, which drops it (log-probs move by 0.8 on gemma2_gqa).
                  attn_implementation="eager")
    kwargs.update(overrides)
    config = getattr(transformers, config_cls)(**kwargs)
    if model_cls in MULTIMODAL:  # the text config above, beside a small vision tower
        vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=32, patch_size=8)
        labels = {"num_labels": overrides["num_labels"]} if "num_labels" in overrides else {}
        config = transformers.Gemma3Config(text_config=config, vision_config=vision, mm_tokens_per_image=4,
                                           attn_implementation="eager", pad_token_id=0, **labels)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # HF initialises them to 0, i.e. (1 + w) = 1: make them matter
                p.normal_(0.0, 0.3)
            elif "q_proj" in name or "k_proj" in name:  # attention scores of order 1: softcaps bite
                p.mul_(10.0)
            elif "embed_tokens" in name:  # logits of order 1 to 10: the final softcap bites
                p.mul_(20.0)
    model.save_pretrained(out_dir)
    if config_cls == "GemmaConfig":  # as the official Gemma 1 releases ship it: the legacy name of tanh GELU
        path = Path(out_dir) / "config.json"
        path.write_text(path.read_text().replace('"hidden_act": "gelu_pytorch_tanh"', '"hidden_act": "gelu"'))
        assert '"hidden_act": "gelu"' in path.read_text()
    if model_cls in MULTIMODAL:  # the reference is transformers' reading of the sparse file
        _as_released(out_dir)
        model = getattr(transformers, model_cls).from_pretrained(out_dir, attn_implementation="eager").eval()
    return model


def hf_token_logprobs(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(tokens[1:]).unsqueeze(-1)).squeeze(-1)
