"""A megatron-core GPTModel from the run config: local layer spec on CPU, Transformer Engine on GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer import TransformerConfig

from megatron_bond.config import Config
from megatron_bond.ops import HeadSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def use_transformer_engine() -> bool:
    """TE specs wherever TE imports and CUDA is present; the local spec everywhere else."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def transformer_config(cfg: Config) -> TransformerConfig:
    m, p = cfg.model, cfg.parallel
    dtype = _DTYPES[m.params_dtype]
    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        # The fused kernels below need apex / TE on CUDA; on CPU Megatron's plain-torch paths run.
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=on_gpu,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False,
        # gloo has no batched isend/irecv sync semantics on CPU; per-op p2p is exact there.
        batch_p2p_comm=on_gpu,
    )


class BondGPTModel(GPTModel):
    """GPTModel whose last stage can give its final hidden states to a log-prob head
    (``forward(..., head=h)``) instead of materialising [tokens, vocab] logits."""

    def __init__(self, *args, real_vocab_size: int, final_logit_softcap: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.real_vocab_size = real_vocab_size
        self.final_logit_softcap = final_logit_softcap
        self._head = None

    def head_spec(self) -> HeadSpec:
        """This rank's place in the vocab-parallel output layer."""
        rows = self.vocab_size // ps.get_tensor_model_parallel_world_size()
        return HeadSpec(
            vocab_start=ps.get_tensor_model_parallel_rank() * rows,
            vocab_size=self.real_vocab_size,
            softcap=self.final_logit_softcap,
            group=ps.get_tensor_model_parallel_group(),
            backend="triton" if torch.cuda.is_available() else "torch",
        )

    def forward(self, *args, head=None, **kwargs):
        self._head = head
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._head = None

    def _postprocess(self, hidden_states, *args, **kwargs):
        if self._head is None or not self.post_process:
            return super()._postprocess(hidden_states, *args, **kwargs)
        if self.config.sequence_parallel:
            hidden_states = gather_from_sequence_parallel_region(hidden_states)
        if self.share_embeddings_and_output_weights:
            weight = self.shared_embedding_or_output_weight()
        else:
            weight = self.output_layer.weight
        return self._head(hidden_states, weight, self.head_spec())


def build_model(cfg: Config) -> list[BondGPTModel]:
    """One model chunk per virtual pipeline stage of this rank (one chunk without vpp)."""
    config = transformer_config(cfg)
    if use_transformer_engine():
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    vpp = cfg.parallel.vpp or 1
    chunks = []
    for vp_stage in range(vpp):
        chunks.append(
            BondGPTModel(
                config=config,
                transformer_layer_spec=spec,
                vocab_size=cfg.model.padded_vocab_size(),
                real_vocab_size=cfg.model.vocab_size,
                final_logit_softcap=cfg.model.final_logit_softcap,
                max_sequence_length=cfg.model.max_seq_length,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                share_embeddings_and_output_weights=True,
                position_embedding_type="rope",
                vp_stage=vp_stage if cfg.parallel.vpp else None,
            )
        )
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return [chunk.to(device) for chunk in chunks]
