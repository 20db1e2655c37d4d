"""The rollout engine boundary: training, evaluation and `megatron-bond generate` ask an engine for n
responses per prompt from the weights of one role (the policy, the anchor or π_ref) and get them back
with the sampler's per-token log-probs and the version of the weights that drew them.

An engine holds weights per role; ``refit`` gives it a role's current weights and their version, and
``release`` (once the trainer's samples are drawn) gives its memory back and drops them all. A
rollout carries that version, and ``Rollouts.require`` refuses one drawn from other weights than the
trainer's current ones (an engine that missed a refit, or a rollout kept across an update). The losses
never use the engine's log-probs: the trainer re-scores every response through its fused head, and
``mismatch`` compares the two (the train/inference mismatch guard). Those types live in
rollout/rollouts.py, which every engine imports.

``native`` is megatron-core's decode loop (rollout/generate.py) on the trainer's own model chunks, so
its refit only records which chunks serve a role and costs nothing; it is the reference and the default.
``vllm`` (rollout/vllm_engine.py) is a colocated vLLM worker in each rank, refitted from the shards.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from megatron_bond.config import ConfigError
from megatron_bond.rollout.generate import generate
from megatron_bond.rollout.rollouts import Rollouts, StaleRollout, Version, derived_seed
from megatron_bond.rollout.sampling import SamplingParams


class NativeEngine:
    """megatron-core's static-cache decode loop on the trainer's chunks. Prompts go in groups of
    ``batch_size`` (each with its n samples), each group's sampler seeded by (seed parts, global index of
    its first prompt): a prompt's samples depend neither on the data-parallel layout (when the group size
    divides the per-rank share) nor on anything a resumed run would have to restore."""

    name = "native"

    def __init__(self, cfg, stop_ids: tuple[int, ...], max_new_tokens: int, batch_size: int, hf_dir=None):
        self.cfg, self.stop_ids, self.max_new_tokens, self.batch_size = cfg, stop_ids, max_new_tokens, batch_size
        self.weights: dict[str, tuple[list, Version]] = {}

    def refit(self, chunks: list, version: Version) -> float:
        """The role's weights from now on; returns the seconds it took (none here: the chunks are read in
        place, so the trainer's later updates reach the next rollout only through a new refit's version)."""
        self.weights[version.role] = (chunks, version)
        return 0.0

    def sample(self, role: str, prompts: list[list[int]], n: int, params: SamplingParams, seed_parts: tuple,
               first_index: int) -> Rollouts:
        if role not in self.weights:
            raise StaleRollout(f"the engine has no {role} weights: refit it first")
        chunks, version = self.weights[role]
        start_time = time.perf_counter()
        responses, logprobs, computed, useful = [], [], 0, 0
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                group = prompts[start : start + self.batch_size]
                out = generate(chunks, self.cfg, group, self.max_new_tokens, params,
                               derived_seed(*seed_parts, first_index + start), self.stop_ids, n=n)
                responses += [out.responses[i * n : (i + 1) * n] for i in range(len(group))]
                logprobs += [out.logprobs[i * n : (i + 1) * n] for i in range(len(group))]
                computed, useful = computed + out.computed, useful + out.useful
        return Rollouts(version, responses, logprobs, time.perf_counter() - start_time, computed, useful)

    def release(self) -> None:
        """The trainer's samples are drawn: the engine holds no role's weights until the next refit (every
        engine's contract; here nothing is freed, the chunks are the trainer's)."""
        self.weights.clear()


def sample_in_waves(engine, role: str, prompts: list[list[int]], n: int, params: SamplingParams, seed_parts: tuple,
                    first_index: int, per_wave: int | None) -> Rollouts:
    """``engine.sample`` of n samples per prompt, drawn ``per_wave`` at a time (None: all at once), so an
    engine call holds the KV cache of at most rollout.batch_size × per_wave sequences. A draw that needs
    one wave is the plain call (the same samples as without a budget); wave w of several is seeded by
    (seed parts, "wave", w)."""
    if per_wave is None or n <= per_wave:
        return engine.sample(role, prompts, n, params, seed_parts, first_index)
    sizes = [min(per_wave, n - start) for start in range(0, n, per_wave)]
    return Rollouts.joined([engine.sample(role, prompts, m, params, (*seed_parts, "wave", w), first_index)
                            for w, m in enumerate(sizes)])


def _vllm_engine(*args, **kwargs):
    from megatron_bond.rollout.vllm_engine import VllmEngine  # vLLM is an optional extra: imported on use

    return VllmEngine(*args, **kwargs)


ENGINES = {NativeEngine.name: NativeEngine, "vllm": _vllm_engine}


def build_engine(name: str, cfg, stop_ids: tuple[int, ...], max_new_tokens: int, batch_size: int,
                 hf_dir: Path | None = None):
    """``hf_dir``: the checkpoint's hf/ directory (vLLM builds its model from config.json there)."""
    if name not in ENGINES:
        raise ConfigError(f"rollout.engine {name!r}: this build has {sorted(ENGINES)}")
    return ENGINES[name](cfg, stop_ids, max_new_tokens, batch_size, hf_dir=hf_dir)
