"""What a resumed run may change: the run a checkpoint continues must be the run the user started.

A checkpoint records the resolved config and a fingerprint of the checkpoints it read (policy, reward).
On resume, a change of what the numbers depend on is refused in one line naming the key: the reward
source, the policy checkpoint (path or fingerprint), ``bond.*``, ``data.*``, ``rollout.*``, the model,
``optimizer.*``, ``run.seed``, ``train.global_batch_size``, ``policy.dtype``, and ``train.steps`` under a
decaying LR schedule. The layout, ``train.steps`` (constant LR), evaluation, checkpoint and logging
settings, packing and its token budgets may change. ``run.allow_changed=[key or section, ...]`` accepts listed changes (except those in
NEVER, and under LoRA policy.ckpt, the base the saved adapters belong to): they take effect (a new optimizer.lr applies) and rank 0 says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from megatron_bond.config import Config, ConfigError

MAY_CHANGE = ("parallel.", "checkpoint.", "logging.", "run.name", "run.output_dir", "run.allow_changed",
              "train.steps", "train.eval_every", "train.eval_ref_samples", "train.max_skipped_steps",
              "model.transformer_impl", "model.attention_impl", "optimizer.distributed", "rollout.engine",
              "rollout.vllm_memory_fraction",
              # packing and its token budgets lay the same rows out otherwise: the numbers within float tolerance
              "train.packing", "train.max_tokens_per_microbatch", "rollout.score_max_tokens_per_microbatch",
              "reward.max_tokens_per_microbatch",
              # how the reward service is reached, not what it computes (its url is the reward's identity)
              "reward.max_concurrency", "reward.timeout_s", "reward.max_retries", "reward.max_wait_s", "reward.token_env")  # (the optimizer state's sharding: state.py)
# Changes no acceptance can make work: the saved prompt order and data position belong to this prompt set
# and seed (the prompt filter depends on max_new_tokens), and the saved tensors to this model.
NEVER = ("run.seed", "data.", "rollout.max_new_tokens", "model.")
INPUTS = ("policy.ckpt", "reward.ckpt")


def fingerprint(ckpt: str | Path) -> str:
    """A digest of a model checkpoint's metadata: its config, the tensor index of its distributed
    checkpoint, every file's name and size, and hf/config.json (not the weights' bytes: a resume must
    not read gigabytes to start)."""
    root = Path(ckpt)
    digest = hashlib.sha256()
    for rel in ("megatron_bond.json", "model/.metadata", "hf/config.json"):
        path = root / rel
        digest.update(rel.encode() + (path.read_bytes() if path.is_file() else b"<absent>"))
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def run_inputs(cfg: Config) -> dict[str, str | None]:
    """{"policy.ckpt": fingerprint or None, "reward.ckpt": ...}: saved in every checkpoint's trainer.json."""
    paths = {"policy.ckpt": cfg.policy.ckpt, "reward.ckpt": cfg.reward.ckpt}
    return {key: fingerprint(path) if path else None for key, path in paths.items()}


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _accepted(key: str, allowed: list[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allowed)


def resume_changes(ckpt: Path, cfg: Config) -> list[str]:
    """The changes ``cfg`` makes to the checkpoint's run that run.allow_changed accepts ("key: old -> new");
    any other change of what the numbers depend on is a ConfigError."""
    saved_cfg = Config.from_dict(json.loads((ckpt / "config.json").read_text()))
    saved = _leaves(saved_cfg.to_dict())
    now = _leaves(cfg.to_dict())
    changes = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k] and not k.startswith(MAY_CHANGE)}
    recorded = json.loads((ckpt / "trainer.json").read_text()).get("inputs")
    if recorded is not None:  # checkpoints written before fingerprints were kept have none to compare
        current = run_inputs(cfg)
        for key in INPUTS:
            if key not in changes and recorded.get(key) != current[key]:
                changes[key] = (f"fingerprint {recorded.get(key)}", f"fingerprint {current[key]}")
    if saved_cfg.optimizer.decay_style != "constant" and saved_cfg.train.steps != cfg.train.steps:
        # the LR decays over train.steps: the saved schedule would spend the extra steps at min_lr
        changes["train.steps"] = (saved_cfg.train.steps, cfg.train.steps)
    # Under LoRA the policy is policy.ckpt's base plus the saved adapters: another base is another policy.
    never = NEVER + (INPUTS[0],) if cfg.model.lora.enabled else NEVER
    refused = [k for k in changes if not _accepted(k, cfg.run.allow_changed) or k.startswith(never)]
    if refused:
        shown = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        accept = ("" if refused[0].startswith(never)
                  else f", or accept with run.allow_changed=[{refused[0]}]")
        raise ConfigError(f"cannot resume from {ckpt}: {shown}{more} changed since the run started; use a new "
                          f"run.output_dir for a different run{accept}")
    return [f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in changes]
