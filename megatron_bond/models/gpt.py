"""megatron-core GPTModel from the run config (any family in models/spec.py), with fused log-prob heads,
Gemma's embedding scale and final softcap, and an optional scalar reward head."""

from __future__ import annotations

import contextlib

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer.transformer_block import get_num_layers_to_build

from megatron_bond.config import Config
from megatron_bond.models.lora import freeze_base
from megatron_bond.models.spec import decoder_spec, transformer_config
from megatron_bond.ops import HeadSpec
from megatron_bond.runtime.megatron_compat import PostprocessHookGPTModel

class BondGPTModel(PostprocessHookGPTModel):
    """GPTModel whose last stage can give its final hidden states to a log-prob head
    (``forward(..., head=h)``) instead of materialising [tokens, vocab] logits.

    Also: embeddings scaled by sqrt(hidden) in the model dtype (Gemma), the final-logit softcap on the
    plain logits path, and ``reward_head`` (hidden -> 1, on the last stage) for reward models, whose
    forward returns per-token scores [b, s] in fp32 (head and Gemma's final norm computed in fp32)."""

    def __init__(self, *args, real_vocab_size: int, final_logit_softcap: float | None = None,
                 scale_embeddings: bool = False, reward_head: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.real_vocab_size = real_vocab_size
        self.final_logit_softcap = final_logit_softcap
        self._head = None
        if scale_embeddings and self.pre_process:
            self.embedding.register_forward_hook(_scale_by_sqrt_hidden)
        self.reward_head = None
        if reward_head and self.post_process:
            self.reward_head = torch.nn.Linear(
                self.config.hidden_size, 1, bias=False, dtype=self.config.params_dtype
            )

    def head_spec(self) -> HeadSpec:
        """This rank's place in the vocab-parallel output layer."""
        rows = self.vocab_size // ps.get_tensor_model_parallel_world_size()
        return HeadSpec(
            vocab_start=ps.get_tensor_model_parallel_rank() * rows,
            vocab_size=self.real_vocab_size,
            softcap=self.final_logit_softcap,
            group=ps.get_tensor_model_parallel_group(),
            backend="triton" if torch.cuda.is_available() else "torch",
            reduce_hidden_grad=not self.config.sequence_parallel,  # the gather's reduce-scatter sums them
        )

    def forward(self, *args, head=None, **kwargs):
        self._head = head
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._head = None

    def postprocess(self, hidden_states, default, kwargs):
        if not self.post_process:
            return default()
        if self.reward_head is not None:
            if self.config.sequence_parallel:  # the replicated head's gradient is whole on every rank: split it
                hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
            # In fp32 from the fp32 final norm (Gemma's, spec.py): bf16 rewards keep 8 bits and tie.
            score = torch.nn.functional.linear(hidden_states.float(), self.reward_head.weight.float())
            return score.squeeze(-1).transpose(0, 1)
        if self._head is None:
            if self.final_logit_softcap and kwargs.get("labels") is not None:
                raise NotImplementedError("a softcapped model computes its loss through the fused heads")
            logits = default()
            cap = self.final_logit_softcap
            return torch.tanh_(logits / cap) * cap if cap else logits  # one temporary [b, s, V], not two
        if self.config.sequence_parallel:
            hidden_states = gather_from_sequence_parallel_region(hidden_states)
        if self.share_embeddings_and_output_weights:
            weight = self.shared_embedding_or_output_weight()
        else:
            weight = self.output_layer.weight
        return self._head(hidden_states, weight, self.head_spec())


@contextlib.contextmanager
def without_sequence_parallel(chunks):
    """Generation and scoring run without sequence parallelism, as megatron-core's inference does (a
    decode step's single position cannot be split over TP ranks): its own switch turns it off on the
    model's modules and config, and back on for training."""
    models = [unwrap(c) for c in chunks]
    if not models[0].config.sequence_parallel:
        yield
        return
    from megatron.core.transformer.utils import set_model_to_sequence_parallel

    for model in models:
        set_model_to_sequence_parallel(model, False)
    try:
        yield
    finally:
        for model in models:
            set_model_to_sequence_parallel(model, True)


def unwrap(chunk):
    """The model inside megatron-core's DDP wrapper (or the model itself)."""
    return chunk.module if hasattr(chunk, "module") else chunk


def _scale_by_sqrt_hidden(module, inputs, output):
    """Gemma scales embeddings by sqrt(hidden) with the factor rounded to the model dtype, as HF does."""
    return output * torch.tensor(output.shape[-1] ** 0.5, dtype=output.dtype)


def build_model(cfg: Config, initialize: bool = True) -> list[BondGPTModel]:
    """One model chunk per virtual pipeline stage of this rank (one chunk without vpp).
    ``initialize=False`` skips random init (weights are about to be loaded)."""
    config = transformer_config(cfg)
    config.perform_initialization = initialize
    m = cfg.model
    vpp = cfg.parallel.vpp or 1
    chunks = []
    for vp_stage in range(vpp):
        stage = vp_stage if cfg.parallel.vpp else None
        spec = decoder_spec(cfg, get_num_layers_to_build(config, vp_stage=stage))
        chunks.append(
            BondGPTModel(
                config=config,
                transformer_layer_spec=spec,
                vocab_size=m.padded_vocab_size(),
                real_vocab_size=m.vocab_size,
                final_logit_softcap=m.final_logit_softcap,
                scale_embeddings=m.scale_embeddings,
                reward_head=m.reward_head,
                max_sequence_length=m.max_seq_length,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                share_embeddings_and_output_weights=m.tie_embeddings,
                position_embedding_type="rope",
                rotary_base=m.rope_theta,
                seq_len_interpolation_factor=m.rope_scaling_factor,
                vp_stage=stage,
            )
        )
    if m.lora.enabled:
        freeze_base(chunks)
        if cfg.parallel.recompute and chunks[0].pre_process:
            # Recomputed layers (megatron-core's checkpoint function) give parameter gradients only when
            # their input requires one: the frozen embedding's output does not by itself.
            chunks[0].embedding.register_forward_hook(_require_grad)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return [chunk.to(device) for chunk in chunks]


def _require_grad(module, inputs, output):
    return output.requires_grad_(True) if torch.is_grad_enabled() else output
