"""Rules between keys (heads against TP, layers against PP, one reward source, ...) and the numeric
ranges of ranges.py; and what the world size decides (the batch split)."""

from __future__ import annotations

from megatron_bond.bond.algorithms import ALGORITHMS
from megatron_bond.config.errors import ConfigError
from megatron_bond.config.model import LORA_TARGETS
from megatron_bond.config.ranges import check_ranges
from megatron_bond.config.run import EVAL_METRICS, REWARD_SOURCES


def validate(cfg, architecture: bool = True) -> None:
    """Cross-key rules and ranges (one-line ConfigError naming the key), before any process group.
    ``architecture=False``: not the model section's rules against itself and the layout (a recipe with
    policy.ckpt, whose architecture is the checkpoint's: checked once resolved)."""
    values = cfg.to_dict()
    check_ranges(values)
    for key in cfg.run.allow_changed:
        node = values
        for part in key.split("."):
            _require(isinstance(node, dict) and part in node, "run.allow_changed", f"{key!r} is not a config key or section")
            node = node[part]
    m, p = cfg.model, cfg.parallel
    if architecture:
        _check_architecture(m, p)
    # Rollouts and scoring run forward-only microbatches whose count is any divisor of the rows, which
    # megatron-core's interleaved schedule cannot run; training would need one data iterator per chunk.
    _require(p.vpp is None, "parallel.vpp", "the interleaved (virtual) pipeline schedule is not supported: "
             "leave it unset (use parallel.first_stage_layers / last_stage_layers for uneven stages)")
    _check_lora_choices(cfg)
    _require(cfg.rollout.engine != "vllm" or p.pp == 1, "rollout.engine",
             f"vllm runs at pipeline size 1 (got pp={p.pp}): vLLM's stages would not be Megatron's; use tensor "
             "parallelism, or rollout.engine=native")
    b = cfg.bond
    modes = ALGORITHMS[b.algorithm].anchor_modes
    _require(b.anchor == "auto" or b.anchor in modes, "bond.anchor",
             f"{b.algorithm} takes bond.anchor in {list(modes)} (or auto: {modes[0]})")
    sources = [f"reward.{k}" for k in REWARD_SOURCES if getattr(cfg.reward, k) is not None]
    _require(len(sources) <= 1, "reward", f"{len(sources)} sources are given ({', '.join(sources)}): one at most "
             "(on the command line, one source replaces the recipe's; reward.KEY=null removes one)")
    c = cfg.checkpoint
    _require(not c.export_hf or cfg.policy.ckpt, "checkpoint.export_hf",
             "needs policy.ckpt (a converted Hugging Face model: its hf/ files are the export's config and tokenizer)")
    _require(c.keep_best is None or c.export_hf, "checkpoint.keep_best", "needs checkpoint.export_hf")
    _require(c.keep_best is None or c.keep_best in EVAL_METRICS, "checkpoint.keep_best",
             f"{c.keep_best!r} is not an evaluation metric (one of {', '.join(EVAL_METRICS)})")
    _require(cfg.reward.url is None or cfg.reward.url.startswith(("http://", "https://")), "reward.url",
             f"{cfg.reward.url!r} must start with http:// or https://")
    _require(cfg.reward.function is None or ":" in cfg.reward.function, "reward.function",
             f"{cfg.reward.function!r} must be 'module:function'")
    t, r, o = cfg.train, cfg.rollout, cfg.optimizer
    _require(o.min_lr <= o.lr, "optimizer.min_lr", f"must be <= optimizer.lr ({o.lr})")
    _require(t.global_batch_size >= 2 or b.algorithm == "reinforce", "train.global_batch_size",
             "the leave-one-out baseline needs at least 2 prompts per step")


def _check_architecture(m, p) -> None:
    """The model section against itself and the layout."""
    groups = m.num_query_groups or m.num_attention_heads
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
    _require(m.family != "gpt" or m.attention_impl == "auto", "model.attention_impl",
             "the gpt family runs megatron-core's own attention: leave it at auto")
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
    _require(m.pad_token_id < m.vocab_size, "model.pad_token_id", f"must be below model.vocab_size ({m.vocab_size})")


def check_rollout_fits(cfg) -> None:
    """A training run's responses leave room for a prompt in the model's context (cfg.model is the
    architecture that trains: the checkpoint's once resolved)."""
    m, r = cfg.model, cfg.rollout
    _require(r.max_new_tokens < m.max_seq_length, "rollout.max_new_tokens",
             f"{r.max_new_tokens} leaves no room for a prompt in model.max_seq_length ({m.max_seq_length})")
    row = longest_row(cfg)
    _require(row <= m.max_seq_length, "data.max_prompt_tokens",
             f"{cfg.data.max_prompt_tokens} + rollout.max_new_tokens {r.max_new_tokens} = {row} tokens exceed "
             f"model.max_seq_length ({m.max_seq_length})")
    if cfg.train.packing:  # a row is one document of one pack: it never spans two
        _require(m.family != "gpt" or m.transformer_impl == "transformer_engine", "train.packing",
                 "the gpt family's local attention (megatron-core's DotProductAttention) cannot serve packed "
                 "documents: use a Gemma family, model.transformer_impl=transformer_engine, or train.packing=false")
        for key, budget in (("train.max_tokens_per_microbatch", cfg.train.max_tokens_per_microbatch),
                            ("rollout.score_max_tokens_per_microbatch", r.score_max_tokens_per_microbatch),
                            ("reward.max_tokens_per_microbatch", cfg.reward.max_tokens_per_microbatch)):
            _require(budget is None or budget >= row, key,
                     f"{budget} tokens hold no row of the recipe's longest ({row} = data.max_prompt_tokens "
                     "+ rollout.max_new_tokens)")
    wave = r.batch_size * row  # one sample for each prompt of an engine call
    _require(r.max_kv_tokens is None or r.max_kv_tokens >= wave, "rollout.max_kv_tokens",
             f"{r.max_kv_tokens} tokens hold less than one sample for each of rollout.batch_size "
             f"({r.batch_size}) prompts of {row} tokens ({wave})")


def longest_row(cfg) -> int:
    """The longest prompt + response a training run meets (longer prompts are dropped, train/data.py)."""
    return cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens


def _check_lora_choices(cfg) -> None:
    lora = cfg.model.lora
    unknown = [t for t in lora.targets if t not in LORA_TARGETS]
    _require(not unknown, "model.lora.targets", f"{unknown[0]!r} is not a linear adapters can go on "
             f"(one of {', '.join(LORA_TARGETS)})" if unknown else "")
    _require(len(set(lora.targets)) == len(lora.targets) and lora.targets, "model.lora.targets",
             "name each target once, and at least one")
    if not lora.enabled:
        return
    # Not yet: the adapters' sequence-parallel reductions, TE's norm-fused linears (whose input is the
    # un-normed hidden state), and vLLM's in-memory LoRA loading.
    _require(not cfg.parallel.sequence_parallel, "parallel.sequence_parallel", "is not supported with model.lora")
    _require(cfg.model.transformer_impl != "transformer_engine", "model.transformer_impl",
             "model.lora runs the local spec (transformer_engine fuses the norm into the adapted linears)")
    _require(cfg.rollout.engine == "native", "rollout.engine",
             f"{cfg.rollout.engine!r} does not take adapters yet: use rollout.engine=native with model.lora")


def check_lora_fits(cfg) -> None:
    """Each target's two dimensions are at least the rank (cfg.model: the architecture that trains, the
    checkpoint's once resolved); a larger rank adds parameters and no expressiveness."""
    m, lora = cfg.model, cfg.model.lora
    if not lora.enabled:
        return
    kv = m.kv_channels or m.hidden_size // m.num_attention_heads
    groups = m.num_query_groups or m.num_attention_heads
    dims = {"linear_qkv": (m.hidden_size, (m.num_attention_heads + 2 * groups) * kv),
            "linear_proj": (m.num_attention_heads * kv, m.hidden_size),
            "linear_fc1": (m.hidden_size, 2 * m.ffn_hidden_size), "linear_fc2": (m.ffn_hidden_size, m.hidden_size)}
    for target in lora.targets:
        smallest = min(dims[target])
        _require(lora.rank <= smallest, "model.lora.rank",
                 f"{lora.rank} exceeds {target}'s dimension {smallest} (its shape is {dims[target][1]} x {dims[target][0]})")


def check_batch_split(cfg, dp: int) -> None:
    """What the world size decides: the batch split over ``dp`` data-parallel ranks and into
    microbatches (checked by the trainer at start and by the memory planner for an allocation)."""
    t, p = cfg.train, cfg.parallel
    if t.global_batch_size % dp:
        raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) must be divisible by the "
                          f"data-parallel size {dp} (world {dp * p.tp * p.pp} / tp·pp {p.tp * p.pp})")
    per_prompt = ALGORITHMS[cfg.bond.algorithm].trained_per_prompt
    sequences = per_prompt * t.global_batch_size // dp
    if sequences % p.micro_batch_size:
        raise ConfigError(f"parallel.micro_batch_size ({p.micro_batch_size}) must divide the {sequences} "
                          f"training sequences per data-parallel rank ({per_prompt} per prompt)")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key}: {message}")


def samples_per_wave(cfg) -> int | None:
    """How many samples per prompt an engine call draws under rollout.max_kv_tokens: its groups of
    rollout.batch_size prompts each hold m samples of up to data.max_prompt_tokens + rollout.max_new_tokens
    tokens (validate() refused a budget with m < 1). None: no budget."""
    r = cfg.rollout
    if r.max_kv_tokens is None:
        return None
    return r.max_kv_tokens // (r.batch_size * longest_row(cfg))
