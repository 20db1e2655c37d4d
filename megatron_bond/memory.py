"""Per-GPU memory of a J-BOND run, itemised, from the config and the allocation (tools/plan_memory.py).

Counts follow what megatron-core and this package allocate (validated against the tensors of tiny
models on CPU in tests/integration/test_memory_plan.py; docs/memory.md shows the comparison):
- parameters per rank of the fullest pipeline stage: the layer specs of models/spec.py, linear weights
  split over TP, norms replicated, the vocab-parallel embedding on the first stage and (tied
  embeddings at PP > 1, as megatron-core does) a copy of it as the output layer on the last stage;
- policy: weights (model dtype), DDP's gradient buffer (fp32: grad_reduce_in_fp32), Adam's two fp32
  moments and, for bf16 weights, fp32 masters; the distributed optimizer shards moments and masters
  over DP;
- anchor: weights (model dtype) and the fp32 EMA shadow (sharded like the masters); π_ref lives on the
  host; the reward model: weights (model dtype) at the policy's TP/PP;
- under LoRA (model.lora): the base once (policy, anchor and π_ref share it), two sets of adapters, and
  gradients, optimizer state, EMA shadow and checkpoint tensors of the adapters only; activations as
  full fine-tuning (each adapted linear's input is kept for A's gradient as it was for W's; the r-wide
  adapter intermediates are left out);
- rollout KV cache: keys and values of every layer of the stage for the largest generate batch;
- training activations per microbatch: every tensor the local layers save for backward (counted op by
  op below), times the microbatches in flight on the first stage under 1F1B (PP of them);
- the fused head: one chunk of fp32 logits and the fp32 gradients it keeps until backward.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from megatron_bond.config import Config, ConfigError, ModelConfig
from megatron_bond.config.model import LORA_TARGETS
from megatron_bond.ops.attention import CHUNK_BUDGET_ELEMENTS as ATTENTION_CHUNK_ELEMENTS
from megatron_bond.ops.logprob import CHUNK_BUDGET_ELEMENTS
from megatron_bond.config.validate import samples_per_wave
from megatron_bond.rollout.sampling import BLOCK_ELEMENTS, SAMPLER_BYTES_PER_LOGIT
from megatron_bond.phases import PHASES
from megatron_bond.bond.algorithms import algorithm_for

GiB = 2**30
# What vLLM keeps on the GPU through sleep(level=2), which frees only its weights and KV cache: the CUDA
# graphs' memory pool, its NCCL communicators and custom all-reduce buffers, the sampler's preallocated
# tensors. An estimate, not a measurement (about 1 GiB of graphs at the default capture sizes and
# hundreds of MB of communicators at 7-9B, doubled for margin): tests/gpu/validate.sh measures it as
# mem/device_used_gib/train less mem/peak_gib/train with the engine asleep.
VLLM_ASLEEP_BYTES = 2 * GiB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_OVERHEAD = 2.0 * GiB  # CUDA context, NCCL buffers, cuBLAS workspaces: measured 1.5 to 2.5 GiB on H100s
FRAGMENTATION = 0.10  # the caching allocator's slack: plan for 10 % on top of the tensors
# Kept free of the GPU's memory: an 80 GB H100 leaves PyTorch about 79 GiB, and NCCL's and the CUDA
# context's use varies with the cluster (a plan at 79.2 of 80 GiB is not a plan that fits).
HEADROOM = 0.05


@dataclass(frozen=True)
class Allocation:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float = 80.0

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


# vLLM's CPU KV cache (rollout.engine=vllm on CPU): here, so the planner and the engine read one value.
CPU_KVCACHE_GIB = 1  # the CPU KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise: tiny models, tests beside


def cpu_kvcache_gib() -> float:
    return float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB))


def layer_params(m: ModelConfig, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank."""
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    h = m.hidden_size
    qkv = h * (m.num_attention_heads * d + 2 * groups * d) // tp
    proj = m.num_attention_heads * d * h // tp
    mlp = 3 * h * m.ffn_hidden_size // tp  # gate and up (fc1), down (fc2)
    norms = 2 * h + (2 * h if m.post_norms else 0) + (2 * d if m.qk_norm else 0)
    return qkv + proj + mlp + norms


def adapter_params(m: ModelConfig, tp: int, layers: int) -> int:
    """LoRA adapter parameters of ``layers`` transformer layers on one TP rank (models/lora.py's split: a
    column-parallel target's A [r, in] replicated and B [out, r] split over TP, a row-parallel one's A
    split and B replicated)."""
    if not m.lora.enabled:
        return 0
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    h, r = m.hidden_size, m.lora.rank
    shapes = {"linear_qkv": (h, (m.num_attention_heads + 2 * groups) * d), "linear_proj": (m.num_attention_heads * d, h),
              "linear_fc1": (h, 2 * m.ffn_hidden_size), "linear_fc2": (m.ffn_hidden_size, h)}
    per_layer = 0
    for target in m.lora.targets:
        fan_in, fan_out = shapes[target]
        column = LORA_TARGETS[target] == "column"
        per_layer += r * fan_in // (1 if column else tp) + fan_out * r // (tp if column else 1)
    return layers * per_layer


def stage_params(m: ModelConfig, tp: int, pp: int, stage: int, layers: int | None = None) -> int:
    """Parameters one TP rank of pipeline stage ``stage`` holds (``layers``: the stage's transformer
    layers when the stages are uneven; default an even split)."""
    vocab = m.padded_vocab_size() * m.hidden_size // tp
    n = (m.num_layers // pp if layers is None else layers) * layer_params(m, tp)
    if stage == 0:
        n += vocab
    if stage == pp - 1:
        n += m.hidden_size  # final norm
        if m.reward_head:
            n += m.hidden_size
        elif not m.tie_embeddings or pp > 1:  # an output layer of its own (a copy of the embedding if tied)
            n += vocab
    return n


def total_params(m: ModelConfig) -> int:
    return stage_params(m, 1, 1, 0)


def _seq(cfg: Config) -> int:
    return min(cfg.model.max_seq_length, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)


def quadratic_attention(m: ModelConfig) -> bool:
    """Whether the attention forms [b, heads, s, s] scores: the eager reference path (model.attention_impl),
    and the gpt family's megatron-core attention; Gemma's other paths are linear in s (ops/attention.py)."""
    return m.family == "gpt" or m.attention_impl == "eager"


def attention_scratch(m: ModelConfig, tp: int, batch: int, queries: int, keys: int, on_gpu: bool,
                      backward: bool = False) -> int:
    """Bytes of fp32 scores one attention call holds at once (freed when it returns), ops/attention.py:
    the eager path's whole [b, heads, sq, sk] (scores and softmax, 8 bytes a pair; in training they are
    activations instead, activation_bytes); none for FlexAttention and SDPA (CUDA, whole sequences); the
    chunked path's one chunk, at most CHUNK_BUDGET_ELEMENTS unless one query of every row against every
    key is more (a chunk holds at least one query: a decode step), 3 such tensors in forward, 5 in backward."""
    heads = m.num_attention_heads // tp
    pairs = batch * heads * queries * keys
    if quadratic_attention(m):
        return 0 if backward else 8 * pairs
    if on_gpu and m.attention_impl in ("auto", "flex") and queries == keys:
        return 0
    budget = ATTENTION_CHUNK_ELEMENTS["cuda" if on_gpu else "cpu"]
    return (5 if backward else 3) * 4 * min(pairs, max(budget, batch * heads * keys))


def activation_bytes(m: ModelConfig, tp: int, layers: int, seq: int, micro_batch: int, last_stage: bool = True,
                     recompute: str = "none", on_gpu: bool = False) -> int:
    """Bytes the layers of one stage save for backward on one microbatch, counted
    from what autograd keeps alive in this package's local layers (measured op by op on CPU:
    tests/distributed/test_memory_plan.py). Per layer and token (b: bytes of the model dtype):
    - each RMSNorm (input, pre-MLP; Gemma 2/3 also post-attention, post-MLP): an fp32 copy of its input
      and its fp32 normalised output, 8·h;
    - the linear layers' inputs: qkv h, projection heads·d/t, fc1 h (model dtype);
    - attention: the fused qkv output (the value view keeps all of it), the rotated q and k copies,
      (2·heads + 3·groups)·d/t; Gemma 3's q/k norms 8·(heads + groups)·d/t;
    - the gated MLP: fc1's output 2f/t, the activation, its product with the up half and one more
      f/t-sized intermediate, 5f/t in all;
    - the core attention (ops/attention.py) saves views of q, k, v (counted above) and its fp32
      log-sum-exp, 4·heads/t; FlexAttention (CUDA) also its output, b·heads·d/t; the quadratic paths
      (``quadratic_attention``) per (query, key) pair and local head the softcapped scores (model dtype,
      with a softcap), the fp32 softmax and its cast to the model dtype (none in fp32), and per pair once
      per layer the bool mask; none of these under selective recompute, which keeps only the inputs;
    per position: RoPE's cos and sin for q and k. The last stage adds the final norm's 8·h per token.
    ``recompute`` "full": each layer's input (b·h per token) and one layer's activations at a time.
    """
    if recompute == "full":
        return (layers * micro_batch * seq * m.hidden_size * DTYPE_BYTES[m.params_dtype]
                + activation_bytes(m, tp, 1, seq, micro_batch, last_stage, on_gpu=on_gpu))
    b = DTYPE_BYTES[m.params_dtype]
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    heads, groups = m.num_attention_heads // tp, max(1, (m.num_query_groups or m.num_attention_heads) // tp)
    h, f = m.hidden_size, m.ffn_hidden_size // tp
    norms = 4 if m.post_norms else 2
    per_token = (8 * norms * h + b * (2 * h + heads * d) + b * (2 * heads + 3 * groups) * d + b * 5 * f
                 + (8 * (heads + groups) * d if m.qk_norm else 0))
    per_pair = 0
    if recompute != "selective":
        if quadratic_attention(m):
            per_pair = heads * micro_batch * (4 + (b if m.attn_logit_softcap else 0) + (b if b != 4 else 0)) + 1
        else:
            per_token += 4 * heads + (b * heads * d if on_gpu and m.attention_impl in ("auto", "flex") else 0)
    per_layer = micro_batch * seq * per_token + seq * seq * per_pair + 4 * seq * d * b
    return layers * per_layer + (8 * h * seq * micro_batch if last_stage else 0)


def no_grad_layer_bytes(m: ModelConfig, tp: int, seq: int, batch: int, on_gpu: bool = True) -> int:
    """The intermediates one layer's forward holds at once without autograd (prefill, scoring), per token
    (b: bytes of the model dtype): the residual stream in and out, 2·h·b, and the larger of the MLP's
    moment (the pre-MLP norm's fp32 input copy and output 8·h, the gated chain's fc1 output, activation and
    product 4f/t·b) and the attention's (the input norm's 8·h; the fused qkv output and rotated q, k
    (2·heads + 3·groups)·d/t·b; the context and its [s, b, h] copy 2·heads·d/t·b; plus the scores of
    ``attention_scratch``). Measured against live tensor bytes in tests/distributed/test_memory_plan.py."""
    b = DTYPE_BYTES[m.params_dtype]
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    heads, groups = m.num_attention_heads // tp, max(1, (m.num_query_groups or m.num_attention_heads) // tp)
    tokens = batch * seq
    mlp = tokens * (8 * m.hidden_size + 4 * b * m.ffn_hidden_size // tp)
    attention = (tokens * (8 * m.hidden_size + b * (4 * heads + 3 * groups) * d)
                 + attention_scratch(m, tp, batch, seq, seq, on_gpu))
    return tokens * 2 * b * m.hidden_size + max(mlp, attention)


def fc1_params(m: ModelConfig, tp: int, layers: int) -> int:
    """The gated MLP's fc1 (gate and up) on one TP rank of a stage: dist_checkpointing saves it as two
    halves and merges them into a new tensor on load (megatron-core's swiglu sharded factory)."""
    return layers * 2 * m.hidden_size * m.ffn_hidden_size // tp


def kv_cache_bytes(m: ModelConfig, tp: int, layers: int, batch: int, seq: int) -> int:
    d = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = max(1, (m.num_query_groups or m.num_attention_heads) // tp)
    return 2 * layers * batch * seq * groups * d * DTYPE_BYTES[m.params_dtype]


def _logit_chunk(m: ModelConfig, tp: int, tokens: int) -> int:
    """Elements of one fp32 chunk of logits in the fused heads (ops/logprob.py's rule on CUDA)."""
    rows = m.padded_vocab_size() // tp
    return rows * max(1, min(CHUNK_BUDGET_ELEMENTS["cuda"] // rows, -(-tokens // 8)))


def head_bytes(m: ModelConfig, tp: int, tokens: int) -> int:
    """The fused training head: one fp32 chunk of logits, and the fp32 hidden and weight gradients it
    forms in forward and keeps until backward."""
    rows = m.padded_vocab_size() // tp
    return 4 * (_logit_chunk(m, tp, tokens) + rows * m.hidden_size + tokens * m.hidden_size)


@dataclass
class Plan:
    """Bytes per GPU of the fullest stage: what every phase holds (``resident``) and what each phase adds
    (``phases``, keyed by PHASES); the verdict is the largest phase's total against the usable memory."""

    resident: dict[str, float]
    phases: dict[str, dict[str, float]]
    host: dict[str, float]  # bytes of host memory per rank
    capacity: float
    layout: str
    on_gpu: bool = True

    def overhead(self, tensors: float) -> dict[str, float]:
        if not self.on_gpu:
            return {}
        return {"allocator slack (10 %)": FRAGMENTATION * tensors, "CUDA context, NCCL, workspaces": CUDA_OVERHEAD}

    def phase_total(self, phase: str) -> float:
        tensors = sum(self.resident.values()) + sum(self.phases[phase].values())
        return tensors + sum(self.overhead(tensors).values())

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_total)

    @property
    def total(self) -> float:
        return self.phase_total(self.peak_phase)

    @property
    def usable(self) -> float:
        return (1.0 - HEADROOM) * self.capacity

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def plan(cfg: Config, alloc: Allocation, reward: ModelConfig | None = None, on_gpu: bool = True,
         distributed_optimizer: bool | None = None, recompute: str | None = None) -> Plan:
    """Per-phase bytes per GPU of the fullest pipeline stage: each stage is counted with its own
    parameters, layers and microbatches in flight (1F1B: pp − s on stage s), and the stage whose
    largest phase is largest wins. ``cfg`` is resolved (resolve_config): its model dtype trains.
    ``recompute``: parallel.recompute's modes; None: the config's."""
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tp, p.pp
    recompute = recompute or p.recompute
    dp = alloc.world // (tp * pp)
    wanted = cfg.optimizer.distributed if distributed_optimizer is None else distributed_optimizer
    dist_opt = on_gpu if wanted is None else wanted
    shard = dp if dist_opt else 1
    sharded = " (sharded over DP)" if dist_opt and dp > 1 else ""
    policy_layers = p.stage_layers(m.num_layers)
    reward_layers = p.beside_policy(reward.num_layers, m.num_layers).stage_layers(reward.num_layers) if reward else None
    w = DTYPE_BYTES[m.params_dtype]
    seq = _seq(cfg)
    algo = algorithm_for(cfg.bond)
    # An engine call holds rollout.batch_size prompts × their samples of one wave (rollout.max_kv_tokens).
    wave = samples_per_wave(cfg)
    rollout_batch = cfg.rollout.batch_size * min(max(algo.policy_samples, algo.anchor_samples), wave or math.inf)
    eval_batch = cfg.rollout.batch_size * min(cfg.train.eval_ref_samples, wave or math.inf)  # π_ref's k samples
    prompt = min(cfg.data.max_prompt_tokens, m.max_seq_length - cfg.rollout.max_new_tokens)
    rows = algo.trained_per_prompt * cfg.train.global_batch_size // dp  # training sequences per rank
    # A microbatch's shape (sequence, rows): packed, one row of the token budget's positions (every pack
    # at most the budget, rounded up to the TP multiple under sequence parallelism) and at most one pack
    # per row; else micro_batch_size rows of the longest sequence.
    if cfg.train.packing:
        split = tp if p.sequence_parallel else 1
        train_shape, microbatches = (-(-cfg.train.max_tokens_per_microbatch // split) * split, 1), rows
        score_shape = (cfg.rollout.score_max_tokens_per_microbatch or cfg.train.max_tokens_per_microbatch, 1)
        reward_shape = (cfg.reward.max_tokens_per_microbatch or cfg.train.max_tokens_per_microbatch, 1)
    else:
        train_shape, microbatches = (seq, p.micro_batch_size), rows // p.micro_batch_size
        score_shape, reward_shape = (seq, cfg.rollout.score_batch_size), (seq, cfg.reward.batch_size)
    vocab = m.padded_vocab_size()

    def next_token_logits(batch: int) -> float:
        """The last position's logits of this rank's vocab shard, their fp32 copies (/ T, the padded ids
        masked) and the sampler's working set on one block of rows (rollout/sampling.py)."""
        shard = batch * vocab / tp
        return shard * (w + 8) + min(shard, BLOCK_ELEMENTS) * SAMPLER_BYTES_PER_LOGIT

    def stage(s: int) -> Plan:
        n, layers, last = stage_params(m, tp, pp, s, policy_layers[s]), policy_layers[s], s == pp - 1
        inflight = min(pp - s, microbatches)
        acts = activation_bytes(m, tp, layers, *train_shape, last_stage=last, recompute=recompute, on_gpu=on_gpu)
        rm = stage_params(reward, tp, pp, s, reward_layers[s]) if reward else 0
        # Under LoRA only the adapters (a) train: gradients, optimizer state, the anchor and checkpoints are
        # theirs, and the base (n) is held once for the policy, the anchor and π_ref (adapters off).
        a = adapter_params(m, tp, layers)
        lora = m.lora.enabled
        trained = a if lora else n
        # Every model-space tensor a checkpoint holds, in bytes per parameter: policy weights, the anchor's
        # fp32 shadow and (not under the distributed optimizer, whose state is flat) Adam and the masters.
        saved_per_param = w + 4 + (0 if dist_opt else 8 + (4 if w != 4 else 0))
        fc1 = saved_per_param * (2 * m.ffn_hidden_size * m.lora.rank // tp * layers * ("linear_fc1" in m.lora.targets)
                                 if lora else fc1_params(m, tp, layers))  # B of fc1 is saved in halves too
        scoring_layer = no_grad_layer_bytes(m, tp, *score_shape, on_gpu)
        resident = {
            "policy weights" + (" (the base: shared by the anchor and π_ref)" if lora else ""): w * n,
            "LoRA adapters: policy": w * a,
            "policy gradients (fp32 buffer)": 4 * trained,
            "optimizer: Adam moments" + sharded: 8 * trained / shard,
            "optimizer: fp32 masters" + sharded: (4 * trained if w != 4 else 0) / shard,
            "anchor weights": 0 if lora else w * n,
            "LoRA adapters: anchor": w * a,
            "anchor fp32 EMA shadow" + sharded: 4 * trained / shard,
            "reward model weights": w * rm,
        }
        phases = {
            "rollout": {f"KV cache, {rollout_batch} sequences": kv_cache_bytes(m, tp, layers, rollout_batch, seq),
                        "next-token logits (vocab shard) and sampling": next_token_logits(rollout_batch) if last else 0,
                        "prefill: one layer's intermediates": no_grad_layer_bytes(m, tp, prompt, rollout_batch, on_gpu),
                        "decode step: attention scores": attention_scratch(m, tp, rollout_batch, 1, seq, on_gpu)},
            "scoring": {"one layer's intermediates, no grad": scoring_layer,
                        "reward model: one layer's intermediates": no_grad_layer_bytes(
                            reward, tp, *reward_shape, on_gpu) if reward else 0,
                        "fused scoring head (fp32 chunk)":
                            4 * _logit_chunk(m, tp, score_shape[0] * score_shape[1]) if last else 0},
            "train": {"training activations" + (f" ({recompute} recompute)" if recompute != "none" else "")
                      + f" × {inflight} in flight": inflight * acts,
                      "attention backward: one chunk's scores": attention_scratch(
                          m, tp, train_shape[1], train_shape[0], train_shape[0], on_gpu, backward=True),
                      "fused head (chunk + fp32 gradients)": head_bytes(m, tp, train_shape[0] * train_shape[1]) if last else 0,
                      "anchor refresh: flat copy of the anchor": w * trained if dist_opt else 0},
            # Generation's buffers are freed before its samples are scored: the larger of the two counts.
            "eval": {f"KV cache, {eval_batch} sequences (π_ref's k samples)": kv_cache_bytes(m, tp, layers, eval_batch, seq),
                     "next-token logits (vocab shard) and sampling": next_token_logits(eval_batch) if last else 0,
                     "prefill: one layer's intermediates": no_grad_layer_bytes(m, tp, prompt, eval_batch, on_gpu),
                     "decode step: attention scores": attention_scratch(m, tp, eval_batch, 1, seq, on_gpu)},
            # Under the distributed optimizer the anchor's shards are assembled into whole fp32 tensors and
            # flattened for the all-reduce: two fp32 copies. dist_checkpointing loads into the template's
            # tensors in place; the distributed optimizer's state template is counted as fresh buffers.
            # On load every fc1 is merged from its two halves into a new tensor, all before any is copied in;
            # on save the halves are views, which dist_checkpointing clones where they live on the host
            # (on CPU; a GPU's are copied to the host whole, counted there).
            "checkpoint_save": {"anchor: whole fp32 shadow, assembled (2 copies)": 8 * trained if dist_opt else 0,
                                "fc1 halves, cloned (CPU only)": 0 if on_gpu else fc1},
            "checkpoint_load": {"anchor: whole fp32 shadow template (2 copies)": 8 * trained if dist_opt else 0,
                                "distributed optimizer: state template": 12 * trained / shard if dist_opt else 0,
                                "fc1 merged from its saved halves": fc1},
        }
        if cfg.rollout.engine == "vllm":
            # A refit gathers one tensor whole at a time (convert/live.py): the shards received and their
            # concatenation, twice the largest tensor, the embedding.
            gathered = 2 * w * vocab * m.hidden_size if tp > 1 else 0
            _vllm_engine(phases, resident, cfg, w * n, gathered, alloc.gpu_memory_gb * GiB, on_gpu)
        where = f", stage {s} of {pp}" if pp > 1 else ""
        eval_gen = sum(phases["eval"].values())
        if scoring_layer > eval_gen:
            phases["eval"] = {"scoring the policy's samples (one layer, no grad)": scoring_layer}
        # The fully parallel save (train/state.py) spreads every tensor of this model-parallel rank over the
        # DP group, the replicated ones too: each rank stages about 1/DP of weights, anchor and optimizer state.
        host = {"π_ref weights (host copy)": 0 if lora else w * n,
                "checkpoint save: this rank's share of the saved tensors, copied to the host (fully parallel)":
                    ((w + 4) + 8 + (4 if w != 4 else 0)) * trained / dp if on_gpu else 0}
        return Plan(resident, phases, host, alloc.gpu_memory_gb * GiB,
                    f"tp {tp} × pp {pp} × dp {dp} on {alloc.nodes} × {alloc.gpus_per_node}{where}", on_gpu)

    return max((stage(s) for s in range(pp)), key=lambda pl: pl.total)


def _vllm_engine(phases: dict, resident: dict, cfg: Config, weights: float, gathered: float, capacity: float,
                 on_gpu: bool) -> None:
    """rollout.engine=vllm draws the rollout and eval samples (rollout/vllm_engine.py) instead of the native
    decode loop. On GPU its pool is ``vllm_memory_fraction`` of the device (what vLLM's
    gpu_memory_utilization caps: its weights, KV cache and activations), held while it samples and freed by
    sleep (level 2) in every other phase; it is counted with the allocator's slack, though vLLM's sleep-mode
    pool is its own (an overestimate of 10 % of it). On CPU it never sleeps: its weights (this rank's TP
    share, the trainer's dtype) and its KV cache (VLLM_CPU_KVCACHE_SPACE GiB) are held in every phase."""
    refit = {"refit: the largest tensor gathered over TP and concatenated (2 copies of the embedding)": gathered}
    phases["rollout"], phases["eval"] = dict(refit), dict(refit)
    if on_gpu:
        for phase in ("rollout", "eval"):
            phases[phase][f"vLLM engine: rollout.vllm_memory_fraction={cfg.rollout.vllm_memory_fraction} of the GPU"] = (
                cfg.rollout.vllm_memory_fraction * capacity)
        resident["vLLM engine asleep: CUDA-graph pool, communicators, buffers (estimate)"] = VLLM_ASLEEP_BYTES
    else:
        resident["vLLM engine: weights and KV cache (CPU: never asleep)"] = (
            weights + cpu_kvcache_gib() * GiB)


def smallest_change(cfg: Config, alloc: Allocation, reward: ModelConfig | None, **kw) -> str | None:
    """The least disruptive change that makes the plan fit: recompute, a smaller microbatch, then a
    larger TP (within a node, dividing heads and groups), a larger PP (dividing the layers), more nodes."""
    import dataclasses

    m = cfg.model
    groups = m.num_query_groups or m.num_attention_heads

    def fits(c, a, **extra):
        if a.world % (c.parallel.tp * c.parallel.pp):
            return False
        try:
            c.check_batch_split(a.world // (c.parallel.tp * c.parallel.pp))
        except ConfigError:
            return False
        return plan(c, a, reward, **{**kw, **extra}).fits

    for mode in ("selective", "full")[("none", "selective", "full").index(cfg.parallel.recompute):]:
        if fits(cfg, alloc, recompute=mode):
            return f"{mode} activation recompute (parallel.recompute={mode})"
    par = cfg.parallel
    if par.micro_batch_size > 1 and fits(dataclasses.replace(cfg, parallel=dataclasses.replace(par, micro_batch_size=1)), alloc):
        return "parallel.micro_batch_size=1"
    tp = par.tp * 2
    while tp <= alloc.gpus_per_node and m.num_attention_heads % tp == 0 and (groups % tp == 0 or tp % groups == 0):
        if fits(dataclasses.replace(cfg, parallel=dataclasses.replace(par, tp=tp)), alloc):
            return f"parallel.tp={tp}"
        tp *= 2
    # More GPUs, fewest first: the same layout on more nodes (more DP shards the optimizer and anchor),
    # or a larger PP (dividing the layers) on as many nodes as hold it.
    for nodes in sorted({alloc.nodes * k for k in (1, 2, 4, 8)}):
        for pp in [par.pp, *(pp for pp in range(par.pp + 1, m.num_layers + 1) if m.num_layers % pp == 0)]:
            if (nodes, pp) == (alloc.nodes, par.pp) or nodes * alloc.gpus_per_node % (par.tp * pp):
                continue
            even = par if pp == par.pp else dataclasses.replace(par, pp=pp, first_stage_layers=None, last_stage_layers=None)
            if fits(dataclasses.replace(cfg, parallel=even), dataclasses.replace(alloc, nodes=nodes)):
                where = f" on {nodes} nodes" if nodes != alloc.nodes else ""
                if pp == par.pp:
                    return f"{nodes} nodes"
                return (f"parallel.pp={pp}{where}" + (" (even stages: unset first/last_stage_layers)"
                                                      if par.first_stage_layers or par.last_stage_layers else ""))
    return None


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:8.2f} {unit}"
    return f"{n:8.0f} B  "


def format_plan(pl: Plan, change: str | None) -> str:
    lines = [f"memory plan per rank ({pl.layout}):"]
    names = [*pl.resident, *pl.host, *(k for items in pl.phases.values() for k in items),
             *pl.overhead(0.0), "largest phase"]
    width = max(map(len, names)) + 2
    lines.append("  held in every phase:")
    lines += [f"    {k:<{width}}{_size(v)}" for k, v in pl.resident.items() if v]
    for phase in PHASES:
        total = pl.phase_total(phase)
        tensors = sum(pl.resident.values()) + sum(pl.phases[phase].values())
        lines.append(f"  {phase}: {_size(total).strip()}" + ("  <- largest" if phase == pl.peak_phase else ""))
        lines += [f"    + {k:<{width - 2}}{_size(v)}" for k, v in {**pl.phases[phase], **pl.overhead(tensors)}.items() if v]
    for k, v in pl.host.items():
        if v:
            lines.append(f"  host: {k}  {_size(v).strip()} per rank")
    lines.append(f"  largest phase {pl.peak_phase}: {_size(pl.total).strip()} of {_size(pl.usable).strip()} usable "
                 f"({_size(pl.capacity).strip()} less {HEADROOM:.0%} kept free)")
    verdict = "fits" if pl.fits else "does NOT fit"
    if not pl.fits:
        # No single change: say by how much it misses, and what combined changes or a larger GPU would need.
        verdict += f"; smallest change that fits: {change}" if change else (
            f"; no single change found: {pl.peak_phase} needs {_size(pl.total).strip()} of {_size(pl.usable).strip()} "
            f"usable; combine changes (parallel.recompute=full with a larger parallel.tp or parallel.pp, more nodes) "
            f"or use GPUs of at least {math.ceil(pl.total / (1 - HEADROOM) / GiB)} GB")
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)
