"""One typed config schema for a run: recipe YAML + ``key=value`` overrides, validated up front.

Every error is a one-line ``ConfigError`` naming the dotted key, raised before any process group starts.
``Config.to_dict()`` is what checkpoints carry; ``Config.from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class RunConfig:
    name: str = "megatron-bond"
    seed: int = 1234
    output_dir: str = "runs/megatron-bond"


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

    def padded_vocab_size(self) -> int:
        multiple = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // multiple) * multiple


@dataclass
class OptimizerConfig:
    """Adam through megatron-core's get_megatron_optimizer; the LR schedule counts optimizer steps."""

    lr: float = 3e-6
    min_lr: float = 0.0
    warmup_steps: int = 100
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    distributed: Optional[bool] = None  # the distributed optimizer; None: on GPU, off on CPU (unsupported there)


@dataclass
class BondConfig:
    algorithm: Literal["jbond", "bond", "reinforce"] = "jbond"
    beta: float = 0.5  # weight of the backward-KL (RL) side of the Jeffreys divergence
    gamma: float = 0.0  # KL-to-anchor regulariser
    eta: float = 0.02  # EMA anchor rate
    n: int = 2  # Best-of-N of the anchor (BOND); J-BOND uses 2 anchor samples
    k: int = 8  # reference (anchor) samples per prompt for BOND's Monte-Carlo quantiles
    # How the anchor follows the policy: "ema" (J-BOND; rate eta), "swap" (iterative BOND: replaced by
    # the policy every swap_every steps), "fixed" (stays π_ref; REINFORCE always uses it as π_ref);
    # "auto": fixed for reinforce, ema otherwise (resolved before training).
    anchor: Literal["auto", "ema", "swap", "fixed"] = "auto"
    swap_every: int = 50
    beta_rl: float = 0.01  # KL weight of the REINFORCE baseline


@dataclass
class PolicyConfig:
    ckpt: Optional[str] = None  # a checkpoint from tools/convert_hf_to_megatron.py; None: a tiny model from `model`
    # Training dtype; "auto": bfloat16 on GPU, float32 on CPU. float16 is refused (Gemma overflows it).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


@dataclass
class RewardConfig:
    """One reward: a reward-model checkpoint (tools/convert_hf_to_megatron.py, run at the policy's TP/PP)
    or a Python function "module:function"; neither: the built-in rule of the tiny run."""

    ckpt: Optional[str] = None
    function: Optional[str] = None
    batch_size: int = 16  # sequences per reward-model forward


@dataclass
class DataConfig:
    """Prompts from local files through HF datasets (jsonl, json, parquet, or a saved dataset directory);
    None: prompts of random tokens, generated from run.seed (the tiny run)."""

    path: Optional[str] = None
    eval_path: Optional[str] = None  # held-out prompts; None: eval_size prompts held out of `path`
    text_field: str = "text"  # tokenized with the policy checkpoint's SentencePiece tokenizer
    tokens_field: str = "tokens"  # used instead where rows carry token ids
    chat_template: bool = False  # wrap text in Gemma's user turn and open the model turn
    max_prompt_tokens: int = 64  # longer prompts are dropped (and counted)
    eval_size: int = 32
    num_prompts: int = 512  # tiny run only: how many prompts to generate


@dataclass
class RolloutConfig:
    max_new_tokens: int = 16
    batch_size: int = 16  # prompts per generate call (each with all its samples)
    score_batch_size: int = 16  # sequences per scoring forward pass
    # The reward of a response cut at max_new_tokens before any stop id, instead of the reward source's
    # (None: scored as if complete). Applied to every rollout: policy, anchor and evaluation.
    truncated_reward: Optional[float] = None


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_size: int = 16  # prompts per step, split over data-parallel ranks
    eval_every: int = 25  # steps between evaluations (0: only at the start and the end)
    eval_ref_samples: int = 16  # k reference samples per held-out prompt for quantile/ref
    # Updates with a non-finite gradient are skipped (no weights, anchor or LR change); this many in a
    # row end the run without a checkpoint (the last one on disk stays the last good state).
    max_skipped_steps: int = 3


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints (0: only at the end)
    keep_last: int = 2


@dataclass
class LoggingConfig:
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    wandb_project: str = "megatron-bond"
    progress: bool = True  # a tqdm bar with ETA on rank 0


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    bond: BondConfig = field(default_factory=BondConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "")

    def validate(self) -> "Config":
        m, p = self.model, self.parallel
        groups = m.num_query_groups or m.num_attention_heads
        _require(p.tp >= 1 and p.pp >= 1, "parallel.tp", "parallel sizes must be >= 1")
        _require(not p.sequence_parallel or p.tp > 1, "parallel.sequence_parallel", "needs tp > 1")
        _require(
            m.num_attention_heads % p.tp == 0,
            "parallel.tp",
            f"tp={p.tp} must divide model.num_attention_heads={m.num_attention_heads}",
        )
        _require(
            m.num_attention_heads % groups == 0,
            "model.num_query_groups",
            f"{groups} must divide model.num_attention_heads={m.num_attention_heads}",
        )
        _require(
            groups % p.tp == 0 or p.tp % groups == 0,
            "parallel.tp",
            f"tp={p.tp} and model.num_query_groups={groups} must divide one another",
        )
        _require(
            m.padded_vocab_size() % p.tp == 0,
            "model.make_vocab_size_divisible_by",
            f"the padded vocabulary ({m.padded_vocab_size()}) must split evenly over tp={p.tp}",
        )
        _require(
            m.layer_types is None or len(m.layer_types) == m.num_layers,
            "model.layer_types",
            f"needs one entry per layer ({m.num_layers})",
        )
        _require(
            not m.layer_types or set(m.layer_types) <= {"sliding_attention", "full_attention"},
            "model.layer_types",
            "entries must be 'sliding_attention' or 'full_attention'",
        )
        uneven = p.first_stage_layers is not None or p.last_stage_layers is not None
        if uneven:
            _require(p.pp > 1, "parallel.first_stage_layers", "uneven stages need pp > 1")
            layers = p.stage_layers(m.num_layers)  # the other stages' even split falls short when it cannot be
            _require(sum(layers) == m.num_layers and min(layers) >= 1, "parallel.first_stage_layers",
                     f"{m.num_layers} layers with first={p.first_stage_layers}, last={p.last_stage_layers} give "
                     f"stages {layers}: every stage needs at least one layer, and the other stages split the "
                     "rest evenly")
        else:
            _require(
                m.num_layers % p.pp == 0,
                "parallel.pp",
                f"pp={p.pp} must divide model.num_layers={m.num_layers} "
                "(or set parallel.first_stage_layers / last_stage_layers)",
            )
        # Rollouts and scoring send one microbatch through the pipeline, which megatron-core's interleaved
        # schedule cannot run; training alone would need one data iterator per model chunk.
        _require(p.vpp is None, "parallel.vpp", "the interleaved (virtual) pipeline schedule is not supported: "
                 "leave it unset (use parallel.first_stage_layers / last_stage_layers for uneven stages)")
        b = self.bond
        _require(0.0 <= b.beta <= 1.0, "bond.beta", "must lie in [0, 1]")
        _require(0.0 < b.eta <= 1.0, "bond.eta", "must lie in (0, 1]")
        _require(b.n >= 1, "bond.n", "must be >= 1")
        _require(b.k >= 1, "bond.k", "must be >= 1")
        _require(b.swap_every >= 1, "bond.swap_every", "must be >= 1")
        _require(b.gamma >= 0.0, "bond.gamma", "must be >= 0 (a negative γ raises KL to the anchor)")
        _require(b.algorithm != "reinforce" or b.anchor in ("auto", "fixed"), "bond.anchor",
                 "reinforce keeps its anchor fixed at π_ref: leave bond.anchor unset (or fixed)")
        _require(self.reward.ckpt is None or self.reward.function is None, "reward",
                 "give reward.ckpt or reward.function, not both")
        _require(self.reward.function is None or ":" in self.reward.function, "reward.function",
                 f"{self.reward.function!r} must be 'module:function'")
        t, r, o = self.train, self.rollout, self.optimizer
        for key, value in (("train.steps", t.steps), ("train.global_batch_size", t.global_batch_size),
                           ("train.eval_ref_samples", t.eval_ref_samples), ("train.max_skipped_steps", t.max_skipped_steps),
                           ("rollout.max_new_tokens", r.max_new_tokens),
                           ("rollout.batch_size", r.batch_size), ("rollout.score_batch_size", r.score_batch_size),
                           ("reward.batch_size", self.reward.batch_size), ("data.eval_size", self.data.eval_size),
                           ("data.max_prompt_tokens", self.data.max_prompt_tokens), ("data.num_prompts", self.data.num_prompts),
                           ("parallel.micro_batch_size", p.micro_batch_size), ("checkpoint.keep_last", self.checkpoint.keep_last)):
            _require(value >= 1, key, f"must be >= 1, got {value}")
        for key, value in (("train.eval_every", t.eval_every), ("checkpoint.every", self.checkpoint.every),
                           ("optimizer.warmup_steps", o.warmup_steps), ("optimizer.clip_grad", o.clip_grad),
                           ("optimizer.weight_decay", o.weight_decay), ("optimizer.min_lr", o.min_lr)):
            _require(value >= 0, key, f"must be >= 0, got {value}")
        _require(o.lr > 0 and o.min_lr <= o.lr, "optimizer.lr", f"must be > 0 and >= optimizer.min_lr ({o.min_lr})")
        _require(t.global_batch_size >= 2 or b.algorithm == "reinforce", "train.global_batch_size",
                 "the leave-one-out baseline needs at least 2 prompts per step")
        return self

    def check_batch_split(self, dp: int) -> None:
        """What the world size decides: the batch split over ``dp`` data-parallel ranks and into
        microbatches (checked by the trainer at start and by the memory planner for an allocation)."""
        t, p = self.train, self.parallel
        if t.global_batch_size % dp:
            raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) must be divisible by the "
                              f"data-parallel size {dp} (world {dp * p.tp * p.pp} / tp·pp {p.tp * p.pp})")
        sequences = 2 * t.global_batch_size // dp  # two training sequences per prompt
        if sequences % p.micro_batch_size:
            raise ConfigError(f"parallel.micro_batch_size ({p.micro_batch_size}) must divide the {sequences} "
                              f"training sequences per data-parallel rank (2 per prompt)")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key}: {message}")


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"config: {key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config: {key}: expected a list, got {value!r}")
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "3e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"config: {key}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"config: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"config: unknown key '{dotted}' (known: {', '.join(names)})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{dotted}.")
        else:
            kwargs[key] = _check_type(value, hint, dotted)
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config: override {item!r} is not of the form key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config: override {key}: '{part}' is not a section")
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise ConfigError(f"config: override {item!r}: the value is not valid YAML") from None
    return data


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a recipe YAML (or the defaults), apply overrides, and validate."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"config: recipe {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    data = apply_overrides(data, list(overrides or []))
    return Config.from_dict(data).validate()
