"""A stand-in for the vllm package (not installed in the main venv) with the API the engine was written
against, and the rank body of the TP-agreement test: a VllmEngine whose LLM answers differently on each
TP rank, as vLLM's ranks might."""

from __future__ import annotations

import sys
import types


class _LLM:
    def sleep(self, level: int = 1, mode: str = "abort"): ...
    def wake_up(self, tags=None): ...
    def collective_rpc(self, method, timeout=None, args=(), kwargs=None): ...
    def reset_prefix_cache(self): ...
    def generate(self, prompts, sampling_params=None, use_tqdm=True): ...


class _ModelRunner:
    def reload_weights(self, weights_iterator=None, weights_path=None, is_checkpoint_format=True): ...


def fake_vllm(llm=_LLM, runner=_ModelRunner) -> dict:
    """{module name: module} of a fake vllm 0.32 (for sys.modules)."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    return {
        "vllm": module("vllm", __version__="0.32.0", LLM=llm, SamplingParams=SamplingParams),
        "vllm.exceptions": module("vllm.exceptions", VLLMValidationError=type("VLLMValidationError", (ValueError,), {})),
        "vllm.inputs": module("vllm.inputs", TokensPrompt=dict),
        "vllm.v1": module("vllm.v1"), "vllm.v1.worker": module("vllm.v1.worker"),
        "vllm.v1.worker.gpu_model_runner": module("vllm.v1.worker.gpu_model_runner", GPUModelRunner=runner),
    }


def disagreeing_tp_ranks(prompts: list[list[int]], n: int) -> dict:
    """Each TP rank's LLM returns tokens of its own (rank 1 one token longer); what sample returns."""
    import torch
    from megatron.core import parallel_state as ps

    from megatron_bond.config import Config, ParallelConfig
    from megatron_bond.rollout.rollouts import Version
    from megatron_bond.rollout.sampling import SamplingParams
    from megatron_bond.rollout.vllm_engine import VllmEngine
    from megatron_bond.runtime import destroy_distributed, init_distributed

    sys.modules.update(fake_vllm())
    parallel = ParallelConfig(tp=2)
    init_distributed(parallel, seed=0)
    try:
        rank = torch.distributed.get_rank()
        out = lambda tokens: types.SimpleNamespace(token_ids=tokens, logprobs=[{t: types.SimpleNamespace(logprob=-0.5 - rank)}
                                                                             for t in tokens])

        class Disagreeing:
            def generate(self, prompts, params, use_tqdm=False):
                return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                              outputs=[out([7 + rank] * (2 + rank))]) for p in prompts]

        engine = VllmEngine.__new__(VllmEngine)  # the LLM stubbed: everything sample does after it is real
        engine.cfg, engine.stop_ids, engine.max_new_tokens = Config(parallel=parallel), (), 4
        engine.tp_group, engine.tp_src = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_src_rank()
        engine.llm, engine.loaded = Disagreeing(), Version("policy", 0)
        got = engine.sample("policy", prompts, n, SamplingParams(greedy=True), (0, "policy"), 0)
        return {"responses": got.responses, "logprobs": got.logprobs, "computed": got.computed}
    finally:
        destroy_distributed()
