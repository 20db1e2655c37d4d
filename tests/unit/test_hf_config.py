"""config.json -> ModelConfig reads what transformers reads, including the keys a config leaves out
(transformers fills them from its config classes' defaults). The reference is transformers itself."""

import pytest

transformers = pytest.importorskip("transformers")

from megatron_bond.models.hf_config import language_model_config, model_config_from_hf  # noqa: E402

# The Gemma 3 27B release's config (transformers 4.50 wrote its text_config as a diff against
# Gemma3TextConfig: no vocab_size, rope_theta, max_position_embeddings or token ids in it).
GEMMA3_27B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "eos_token_id": [1, 106],
    "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144, "mm_tokens_per_image": 256,
    "torch_dtype": "bfloat16",
    "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                    "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
}
CASES = {
    "gemma_bare": {"model_type": "gemma", "architectures": ["GemmaForCausalLM"]},
    "gemma2_bare": {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
    "gemma3_text_bare": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]},
    "gemma3_27b_multimodal": GEMMA3_27B,
}


def _theirs(hf: dict):
    config = transformers.AutoConfig.for_model(**hf)
    return config.text_config if hf["model_type"] == "gemma3" else config


@pytest.mark.parametrize("name", CASES)
def test_left_out_keys_read_as_transformers_reads_them(name):
    hf = CASES[name]
    text, multimodal = language_model_config(hf)
    ours, theirs = model_config_from_hf(text), _theirs(hf)
    assert multimodal == (hf["model_type"] == "gemma3")
    assert (ours.num_layers, ours.hidden_size, ours.ffn_hidden_size, ours.num_attention_heads,
            ours.num_query_groups, ours.kv_channels, ours.vocab_size, ours.max_seq_length) == (
        theirs.num_hidden_layers, theirs.hidden_size, theirs.intermediate_size, theirs.num_attention_heads,
        theirs.num_key_value_heads, theirs.head_dim, theirs.vocab_size, theirs.max_position_embeddings)
    assert ours.norm_epsilon == theirs.rms_norm_eps
    assert ours.pad_token_id == theirs.pad_token_id
    rope = theirs.rope_parameters
    full = rope.get("full_attention", rope)
    assert ours.rope_theta == full["rope_theta"]
    assert ours.rope_scaling_factor == (full["factor"] if full.get("rope_type") == "linear" else None)
    if "sliding_attention" in rope:
        assert ours.rope_local_theta == rope["sliding_attention"]["rope_theta"]
    if hf["model_type"] != "gemma":
        assert ours.layer_types == theirs.layer_types
        assert ours.sliding_window == theirs.sliding_window
        assert ours.query_pre_attn_scalar == theirs.query_pre_attn_scalar
        assert ours.attn_logit_softcap == theirs.attn_logit_softcapping
    if not multimodal:  # Gemma3ForConditionalGeneration applies no final softcap, whatever the config says
        assert ours.final_logit_softcap == getattr(theirs, "final_logit_softcapping", None)


def test_multimodal_release_keeps_its_token_ids_and_dtype():
    text, _ = language_model_config(GEMMA3_27B)
    assert text["eos_token_id"] == [1, 106]  # end of turn stops rollouts too
    assert (text["bos_token_id"], text["pad_token_id"]) == (2, 0)
    assert model_config_from_hf(text).params_dtype == "bfloat16"
    assert text["architectures"] == ["Gemma3ForCausalLM"] and text["final_logit_softcapping"] is None


def test_multimodal_reward_model_stays_a_reward_model():
    hf = {**GEMMA3_27B, "architectures": ["Gemma3ForSequenceClassification"], "num_labels": 1}
    text, _ = language_model_config(hf)
    assert text["architectures"] == ["Gemma3TextForSequenceClassification"]
    assert model_config_from_hf(text).reward_head
