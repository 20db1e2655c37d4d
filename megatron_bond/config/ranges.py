"""The range of every numeric config key, checked before any process group (and by the planner).

One table, in interval notation: a key the schema adds without an entry here fails
tests/unit/test_config.py, so every later key gets its range too. Optional keys are checked when set;
floats must be finite as well.
"""

from __future__ import annotations

import math
from typing import Any

from megatron_bond.config.errors import ConfigError

INF = math.inf
RANGES = {
    "run.seed": "[0, inf)",
    "parallel.tp": "[1, inf)", "parallel.pp": "[1, inf)", "parallel.vpp": "[1, inf)",
    "parallel.micro_batch_size": "[1, inf)", "parallel.first_stage_layers": "[1, inf)",
    "parallel.last_stage_layers": "[1, inf)",
    "model.num_layers": "[1, inf)", "model.hidden_size": "[1, inf)", "model.ffn_hidden_size": "[1, inf)",
    "model.num_attention_heads": "[1, inf)", "model.num_query_groups": "[1, inf)", "model.kv_channels": "[1, inf)",
    "model.vocab_size": "[1, inf)", "model.make_vocab_size_divisible_by": "[1, inf)", "model.max_seq_length": "[2, inf)",
    "model.final_logit_softcap": "(0, inf)", "model.norm_epsilon": "(0, inf)", "model.rope_theta": "(0, inf)",
    "model.rope_local_theta": "(0, inf)", "model.rope_scaling_factor": "(0, inf)", "model.sliding_window": "[1, inf)",
    "model.attn_logit_softcap": "(0, inf)", "model.query_pre_attn_scalar": "(0, inf)", "model.pad_token_id": "[0, inf)",
    "model.lora.rank": "[0, inf)", "model.lora.alpha": "(0, inf)", "model.lora.dropout": "[0, 1)",
    "optimizer.lr": "(0, inf)", "optimizer.min_lr": "[0, inf)", "optimizer.warmup_steps": "[0, inf)",
    "optimizer.weight_decay": "[0, inf)", "optimizer.adam_beta1": "[0, 1)", "optimizer.adam_beta2": "[0, 1)",
    "optimizer.adam_eps": "(0, inf)", "optimizer.clip_grad": "[0, inf)",
    "bond.beta": "[0, 1]", "bond.gamma": "[0, inf)", "bond.eta": "(0, 1]", "bond.n": "[1, inf)", "bond.k": "[1, inf)",
    "bond.swap_every": "[1, inf)", "bond.beta_rl": "[0, inf)",
    "reward.batch_size": "[1, inf)", "reward.max_concurrency": "[1, inf)", "reward.timeout_s": "(0, inf)",
    "reward.max_retries": "[0, inf)", "reward.max_wait_s": "[0, inf)",
    "data.max_prompt_tokens": "[1, inf)", "data.eval_size": "[1, inf)", "data.num_prompts": "[1, inf)",
    "rollout.max_new_tokens": "[1, inf)", "rollout.batch_size": "[1, inf)", "rollout.score_batch_size": "[1, inf)",
    "rollout.truncated_reward": "(-inf, inf)", "rollout.vllm_memory_fraction": "(0, 1]",
    "rollout.score_max_tokens_per_microbatch": "[1, inf)", "rollout.max_kv_tokens": "[1, inf)",
    "reward.max_tokens_per_microbatch": "[1, inf)", "train.max_tokens_per_microbatch": "[1, inf)",
    "logging.log_every": "[1, inf)", "train.steps": "[1, inf)", "train.global_batch_size": "[1, inf)", "train.eval_every": "[0, inf)",
    "train.eval_ref_samples": "[1, inf)", "train.max_skipped_steps": "[1, inf)",
    "checkpoint.every": "[0, inf)", "checkpoint.keep_last": "[1, inf)",
}


def _parse(spec: str) -> tuple[float, float, bool, bool]:
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    return lo, hi, spec[0] == "[", spec[-1] == "]"


def describe(spec: str) -> str:
    lo, hi, lo_in, hi_in = _parse(spec)
    if hi == INF:
        return f"must be {'>=' if lo_in else '>'} {lo:g}" if lo != -INF else "must be a finite number"
    return f"must lie in {spec}"


def check_ranges(values: dict[str, Any]) -> None:
    """``values``: the config as nested dicts (Config.to_dict())."""
    for key, spec in RANGES.items():
        value = values
        for part in key.split("."):  # sections nest (model.lora.rank)
            value = value[part]
        if value is None:
            continue
        lo, hi, lo_in, hi_in = _parse(spec)
        ok = math.isfinite(value) and (lo <= value if lo_in else lo < value) and (value <= hi if hi_in else value < hi)
        if not ok:
            raise ConfigError(f"config: {key}: {describe(spec)}, got {value}")
