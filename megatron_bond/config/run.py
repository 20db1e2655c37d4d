"""Where a run's inputs come from and where its outputs go: ``run``, ``policy``, ``reward``, ``data``,
``rollout``, ``train``, ``checkpoint`` and ``logging`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class RunConfig:
    name: str = "megatron-bond"
    seed: int = 1234
    output_dir: str = "runs/megatron-bond"
    # Keys (or sections) a resume may change although the numbers depend on them (train/resume.py).
    allow_changed: list[str] = field(default_factory=list)


@dataclass
class PolicyConfig:
    ckpt: Optional[str] = None  # a checkpoint from tools/convert_hf_to_megatron.py; None: a tiny model from `model`
    # Training dtype; "auto": bfloat16 on GPU, float32 on CPU. float16 is refused (Gemma overflows it).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


@dataclass
class RewardConfig:
    """One reward: a reward-model checkpoint (tools/convert_hf_to_megatron.py, run at the policy's TP/PP),
    a Python function "module:function", or a service at ``url`` (train/http_reward.py has the protocol);
    none: the built-in rule of the tiny run."""

    ckpt: Optional[str] = None
    function: Optional[str] = None
    url: Optional[str] = None  # http:// or https://
    batch_size: int = 16  # sequences per reward-model forward, or per request to url
    # The reward model's token budget per packed microbatch (train.packing); None: train's.
    max_tokens_per_microbatch: Optional[int] = None
    max_concurrency: int = 4  # requests in flight per model-parallel group (url)
    timeout_s: float = 60.0  # per request (url)
    max_retries: int = 5  # on connection errors, timeouts, 429 and 5xx (url)
    max_wait_s: float = 120.0  # the backoff between retries of one request, in all (url)
    token_env: Optional[str] = None  # the environment variable holding a bearer token (url)


REWARD_SOURCES = ("ckpt", "function", "url")  # one at most; one given on the command line replaces the recipe's


@dataclass
class DataConfig:
    """Prompts from local files through HF datasets (jsonl, json, parquet, or a saved dataset directory);
    None: prompts of random tokens, generated from run.seed (the tiny run)."""

    path: Optional[str] = None
    eval_path: Optional[str] = None  # held-out prompts; None: eval_size prompts held out of `path`
    text_field: str = "text"  # tokenized with the policy checkpoint's SentencePiece tokenizer
    tokens_field: str = "tokens"  # used instead where rows carry token ids
    messages_field: str = "messages"  # or a conversation, [{"role", "content"}, ...], in the chat format
    chat_template: bool = False  # wrap text in the checkpoint's chat template (else Gemma's turns), opening the model turn
    max_prompt_tokens: int = 64  # longer prompts are dropped (and counted)
    eval_size: int = 32
    num_prompts: int = 512  # tiny run only: how many prompts to generate


@dataclass
class RolloutConfig:
    # What draws the rollouts (rollout/engine.py): "native", megatron-core's decode loop on the trainer's
    # weights, or "vllm", a colocated vLLM worker per rank refitted from them (rollout/vllm_engine.py).
    engine: Literal["native", "vllm"] = "native"
    # vllm: the share of the device's memory vLLM takes while it samples (its weights and KV cache; it
    # sleeps, holding none, while the trainer runs). On CPU the KV cache is VLLM_CPU_KVCACHE_SPACE GiB
    # instead (1 unless set: rollout/vllm_engine.py), held throughout.
    vllm_memory_fraction: float = 0.3
    max_new_tokens: int = 16
    batch_size: int = 16  # prompts per generate call (each with all its samples)
    score_batch_size: int = 16  # sequences per scoring forward pass (unpacked: train.packing=false)
    # Scoring's token budget per packed microbatch (train.packing); None: train.max_tokens_per_microbatch.
    score_max_tokens_per_microbatch: Optional[int] = None
    # The KV cache an engine call may hold, in tokens: the samples of a call are drawn in as many waves
    # as needed (each wave rollout.batch_size prompts x as many samples as fit). None: all at once.
    max_kv_tokens: Optional[int] = None
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
    # Sequence packing (runtime/tokens.py): rows laid end to end in microbatches of at most
    # max_tokens_per_microbatch tokens, each row attending only to itself, instead of
    # parallel.micro_batch_size rows right-padded to the longest. Applies to training, scoring and the
    # reward model.
    packing: bool = False
    max_tokens_per_microbatch: int = 4096


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # training checkpoints, and Hugging Face exports
    # Write the tensors in a forked process while training goes on; ``latest`` moves when every rank's are
    # written (train/state.py). Off by default: a CPU run's saves take a second, and a fork costs more.
    async_save: bool = False
    export_hf: bool = False  # the policy as a Hugging Face directory beside each checkpoint (RUN_DIR/hf/step-N)
    keep_best: Optional[str] = None  # also keep the export with the best value of this evaluation metric
    keep_best_mode: Literal["max", "min"] = "max"


# Evaluation metrics checkpoint.keep_best may name (train/evaluate.py's rows carry them).
EVAL_METRICS = ("quantile/ref", "kl/ref", "reward/policy", "kl/bon_at_quantile")


@dataclass
class LoggingConfig:
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    wandb_project: str = "megatron-bond"
    # Rank 0's progress: on a terminal a tqdm bar with ETA and the step's phases; in a log file (Slurm, a pipe)
    # one line every log_every steps and one per evaluation (train/metrics.py).
    progress: bool = True
    log_every: int = 10
    samples: bool = True  # each evaluation's held-out samples in RUN_DIR/samples/step-N.jsonl (and a wandb Table)
    tensorboard: bool = False  # every metric also as TensorBoard events in RUN_DIR/tb/ (the [tensorboard] extra)
