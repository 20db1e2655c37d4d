"""Rank bodies of the vLLM engine tests (run by tests.harness under .venv-vllm's interpreter)."""

from __future__ import annotations

from pathlib import Path


def refits(ckpts: list[str], tp: int, prompts: list[list[int]], max_new_tokens: int, sampling: dict,
           stop_ids: tuple = ()) -> dict:
    """One vLLM engine refitted in turn with two checkpoints' weights (policy ← 0, anchor ← 1, reference ← 0,
    policy ← 1), sampling after each, with every sample re-scored by the trainer under both models; and
    what sampling a role the engine does not hold, using a rollout of an older version, a temperature vLLM
    refuses and sampling after ``release`` raise."""
    from megatron_bond.commands.score import score_rows
    from megatron_bond.config import ConfigError, ParallelConfig
    from megatron_bond.models.checkpoint import load_model_checkpoint, read_checkpoint_config
    from megatron_bond.rollout.rollouts import StaleRollout, Version
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.rollout.vllm_engine import VllmEngine
    from megatron_bond.runtime import destroy_distributed, init_distributed

    parallel = ParallelConfig(tp=tp)
    init_distributed(parallel, seed=0)
    try:
        cfgs = [read_checkpoint_config(c, parallel) for c in ckpts]
        models = [load_model_checkpoint(c, cfg) for c, cfg in zip(ckpts, cfgs)]
        params = SamplingParams(**sampling)
        engine = VllmEngine(cfgs[0], stop_ids, max_new_tokens, len(prompts), hf_dir=Path(ckpts[0]) / "hf")
        out = {"start_s": engine.start_s, "samples": [], "refit_s": []}
        roles = ["policy", "anchor", "reference", "policy"]
        for step, (role, which) in enumerate(zip(roles, [0, 1, 0, 1])):
            version = Version(role, step)
            out["refit_s"].append(engine.refit(models[which], version))
            got = engine.sample(role, prompts, 1, params, (7, step, role), 0).require(version)
            responses = [rs[0] for rs in got.responses]
            scored = [[s[len(p) - 1:] for s, p in zip(score_rows(m, cfg, [p + r for p, r in zip(prompts, responses)],
                                                                 batch_size=4), prompts)]
                      for m, cfg in zip(models, cfgs)]
            out["samples"].append({"role": role, "model": which, "responses": responses,
                                   "logprobs": [lp[0] for lp in got.logprobs], "scored": scored})
        try:
            engine.sample("anchor", prompts, 1, params, (7, 9, "anchor"), 0)
        except StaleRollout as err:
            out["stale_role"] = str(err)
        try:
            got.require(Version("policy", step + 1))
        except StaleRollout as err:
            out["stale_version"] = str(err)
        try:
            engine.sample("policy", prompts, 1, SamplingParams(temperature=3.0), (7, 9, "policy"), 0)
        except ConfigError as err:
            out["bad_temperature"] = str(err)
        engine.release()
        try:
            engine.sample("policy", prompts, 1, params, (7, 9, "policy"), 0)
        except StaleRollout as err:
            out["released"] = str(err)
        return out
    finally:
        destroy_distributed()
