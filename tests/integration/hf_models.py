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
}


def build_hf_model(variant: str, out_dir: Path, seed: int = 0):
    import transformers

    model_cls, config_cls, overrides = VARIANTS[variant]
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                  num_attention_heads=4, head_dim=12, max_position_embeddings=64, pad_token_id=0,
                  torch_dtype="float32")
    kwargs.update(overrides)
    config = getattr(transformers, config_cls)(**kwargs)
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
    return model


def hf_token_logprobs(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(tokens[1:]).unsqueeze(-1)).squeeze(-1)
