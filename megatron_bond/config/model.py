"""How the model is built and laid out: ``parallel`` and ``model`` sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

# The linears of a transformer layer that can carry adapters, and how megatron-core splits each over
# tensor-parallel ranks (models/lora.py shards the adapters to match).
LORA_TARGETS = {"linear_qkv": "column", "linear_proj": "row", "linear_fc1": "column", "linear_fc2": "row"}


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None  # virtual pipeline chunks per stage (interleaved 1F1B): refused for now
    micro_batch_size: int = 1
    recompute: bool = False  # full activation recompute, layer by layer (megatron-core's uniform method)
    # Sequence parallelism (TP > 1): norms, residuals and dropout on sequence shards in training; the
    # rollouts and scoring passes run without it (as megatron-core's own inference does).
    sequence_parallel: bool = False
    # Uneven pipeline stages (Gemma's 18, 26, 42, 46 and 62 layers rarely divide evenly): layers of the
    # first and/or last stage; the others split the rest evenly. None: every stage the same.
    first_stage_layers: Optional[int] = None
    last_stage_layers: Optional[int] = None

    def model_parallel_size(self) -> int:
        return self.tp * self.pp

    def stage_layers(self, num_layers: int) -> list[int]:
        """Transformer layers of each pipeline stage, first to last (megatron-core's rule)."""
        first, last = self.first_stage_layers, self.last_stage_layers
        rest = num_layers - (first or 0) - (last or 0)
        middle = self.pp - (first is not None) - (last is not None)
        each = rest // middle if middle > 0 else 0
        stages = [each] * self.pp
        if first is not None:
            stages[0] = first
        if last is not None:
            stages[-1] = last
        return stages

    def beside_policy(self, num_layers: int, policy_layers: int) -> "ParallelConfig":
        """This layout for a model of ``num_layers`` run beside the policy (the reward model): the uneven
        stage sizes are the policy's, so a model of another depth splits its layers evenly."""
        if num_layers == policy_layers:
            return self
        return dataclasses.replace(self, first_stage_layers=None, last_stage_layers=None)


@dataclass
class LoraConfig:
    """Low-rank adapters W + (alpha/rank)·B·A on the layers' linears (models/lora.py); rank 0: none (full
    fine-tuning). With adapters only A and B train; the base weights, embeddings, norms and output layer
    stay as policy.ckpt has them, π_ref is the base with adapters off and the anchor a second set."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapters' input, in training passes only
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class ModelConfig:
    """Architecture. ``family`` "gpt" is a plain GQA/SwiGLU GPT (tests); the Gemma families come from a
    Hugging Face config.json through ``megatron_bond.models.hf_config``."""

    family: Literal["gpt", "gemma", "gemma2", "gemma3"] = "gpt"
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # None: multi-head attention
    kv_channels: Optional[int] = None  # head dim; None: hidden_size // num_attention_heads
    vocab_size: int = 256  # the tokenizer's; the embedding is padded (padded_vocab_size)
    # Padding multiple, independent of the layout so that checkpoints reshard across TP.
    make_vocab_size_divisible_by: int = 128
    max_seq_length: int = 128
    final_logit_softcap: Optional[float] = None  # Gemma 2: c·tanh(z/c) on the output logits
    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    activation: Literal["silu", "gelu_tanh", "gelu"] = "silu"  # of the gated MLP ("gelu": exact, erf)
    norm_epsilon: float = 1e-5
    zero_centered_norm: bool = False  # RMSNorm scales by (1 + w) (Gemma)
    scale_embeddings: bool = False  # embeddings times sqrt(hidden_size), in the model dtype (Gemma)
    rope_theta: float = 10000.0
    rope_local_theta: Optional[float] = None  # sliding-window layers' RoPE base (Gemma 3)
    rope_scaling_factor: Optional[float] = None  # linear position scaling on full-attention layers
    sliding_window: Optional[int] = None
    layer_types: Optional[list[str]] = None  # per layer: "sliding_attention" or "full_attention"
    attn_logit_softcap: Optional[float] = None  # Gemma 2
    query_pre_attn_scalar: Optional[float] = None  # softmax scale = this ** -0.5 (Gemma 2/3)
    qk_norm: bool = False  # RMSNorm on queries and keys per head (Gemma 3)
    post_norms: bool = False  # RMSNorm on the attention and MLP outputs before the residual (Gemma 2/3)
    tie_embeddings: bool = True
    reward_head: bool = False  # a scalar head on the last non-pad token (reward models)
    pad_token_id: int = 0
    # Layer implementation: "local" (megatron-core's plain-torch modules), "transformer_engine" (TE's
    # fused modules; needs CUDA and TE), "auto" (TE where both are present). Checkpoints do not depend on it.
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    # Gemma's core attention (ops/attention.py): "auto" (SDPA where a layer needs no softcap, window, mask or
    # documents; FlexAttention on CUDA; the chunked path on CPU), or one path forced: "chunked" (anywhere),
    # "flex" (CUDA: FlexAttention has no backward on CPU), "eager" (the reference, [s, s] scores per head).
    attention_impl: Literal["auto", "chunked", "flex", "eager"] = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)  # how to train the checkpoint, not what it is

    def padded_vocab_size(self) -> int:
        multiple = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // multiple) * multiple
