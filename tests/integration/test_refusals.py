"""The catalogue of bad inputs (docs/reliability.md): every one is refused with one line that names the
problem, a non-zero exit code, no traceback, and nothing partial left behind."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT, run_ranks
from tests.integration.conftest import convert
from tests.integration.hf_models import build_hf_model

pytestmark = pytest.mark.distributed

RECIPE = str(ROOT / "recipes" / "tiny_cpu.yaml")
QUICK = ["train.steps=2", "train.global_batch_size=2", "parallel.micro_batch_size=2", "rollout.max_new_tokens=2", "data.num_prompts=8",
         "data.eval_size=2", "train.eval_ref_samples=2", "logging.wandb_mode=disabled", "logging.progress=false"]


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _train_args(out, *extra):
    return ["train", RECIPE, *QUICK, f"run.output_dir={out}", *extra]


def _ckpt_args(out, ckpt, *extra):
    """From a converted checkpoint: the demo's recipe (no model section: the checkpoint's architecture;
    the tiny recipe's model section would be refused as contradicting it)."""
    return ["train", str(ROOT / "recipes" / "demo.yaml"), *QUICK, "parallel.tp=1", f"run.output_dir={out}",
            f"policy.ckpt={ckpt}", *extra]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, converted):
    """Build every case's inputs in a directory of its own, run them all in one child process, and
    return {name: (expected message, exit code, stderr, traceback, listing before, listing after)}."""
    root = tmp_path_factory.mktemp("refusals")
    run = root / "tiny_run"  # a finished tiny run: policy/ and checkpoints/
    done = subprocess.run([sys.executable, "-m", "megatron_bond.cli", *_train_args(run, "checkpoint.every=1")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    gemma = converted("gemma_mqa")[0] / "ckpt"
    reward = converted("gemma2_reward")[0] / "ckpt"
    hf = root / "hf"
    build_hf_model("gemma_mqa", hf)
    cases, expected = {}, {}

    def case(name, message, make=None):
        d = root / name
        d.mkdir()
        spec = make(d)
        cases[name] = spec
        expected[name] = (message, _listing(d), d)

    def cli(*argv):
        return ("cli", [str(a) for a in argv])

    def copy_run(d):
        shutil.copytree(run, d / "run")
        return d / "run" / "checkpoints" / (d / "run" / "checkpoints" / "latest").read_text().strip() / "dist"

    # train: recipe keys, types, values, layouts
    case("train_unknown_key", "unknown key 'train.stepz'", lambda d: cli(*_train_args(d / "o", "train.stepz=3")))
    case("train_bad_type", "train.steps: expected int", lambda d: cli(*_train_args(d / "o", "train.steps=many")))
    case("train_bad_value", "bond.beta: must lie in [0, 1]", lambda d: cli(*_train_args(d / "o", "bond.beta=2")))
    case("train_missing_recipe", "does not exist", lambda d: cli("train", d / "nope.yaml"))

    def bad_yaml(d):
        (d / "bad.yaml").write_text("run:\n  seed: [1, 2\n")
        return cli("train", d / "bad.yaml", f"run.output_dir={d / 'o'}")

    case("train_yaml_syntax", "bad.yaml:3: not valid YAML", bad_yaml)
    case("train_tp_vs_heads", "tp=3 must divide model.num_attention_heads=4", lambda d: cli(*_train_args(d / "o", "parallel.tp=3")))
    case("train_pp_vs_layers", "must divide model.num_layers=2", lambda d: cli(*_train_args(d / "o", "parallel.pp=3")))
    case("train_world_vs_layout", "world size 1 is not divisible by tp*pp=2*1=2", lambda d: cli(*_train_args(d / "o", "parallel.tp=2")))
    case("train_batch_vs_microbatch", "must divide the 4 training sequences",
         lambda d: cli(*_train_args(d / "o", "parallel.micro_batch_size=3")))
    case("train_batch_of_one", "leave-one-out baseline needs at least 2", lambda d: cli(*_train_args(d / "o", "train.global_batch_size=1")))
    case("train_virtual_pipeline", "parallel.vpp: the interleaved (virtual) pipeline schedule is not supported",
         lambda d: cli(*_train_args(d / "o", "parallel.vpp=2")))
    case("train_bf16_on_cpu", "bfloat16 training needs CUDA", lambda d: cli(*_train_args(d / "o", "policy.dtype=bfloat16")))

    def unwritable(d):
        (d / "file").write_text("")
        return cli(*_train_args(d / "file" / "o"))

    case("train_unwritable_output", "is not writable", unwritable)
    held = []  # open descriptors: the locks stay held until the cases have run

    def output_dir_in_use(d):  # another train on it holds the lock (train/loop.py)
        (d / "o").mkdir()
        held.append(os.open(d / "o", os.O_RDONLY))
        fcntl.flock(held[-1], fcntl.LOCK_EX)
        return cli(*_train_args(d / "o"))

    # WANDB_BASE_URL points at a closed local port (below): refused for the login or for the server
    case("train_wandb_online_unreachable", "logging.wandb_mode=online: ",
         lambda d: cli(*_train_args(d / "o", "logging.wandb_mode=online")))
    case("train_output_dir_in_use", "is in use by another `megatron-bond train`", output_dir_in_use)
    # train: checkpoints
    case("train_missing_policy_ckpt", "not a megatron-bond checkpoint", lambda d: cli(*_train_args(d / "o", f"policy.ckpt={d / 'nope'}")))
    case("train_reward_ckpt_not_reward", "is not a reward model",
         lambda d: cli(*_ckpt_args(d / "o", gemma, f"reward.ckpt={gemma}")))

    def reward_vocab(d):
        shutil.copytree(reward, d / "rm")
        meta = json.loads((d / "rm" / "megatron_bond.json").read_text())
        meta["model"]["vocab_size"] = 300
        (d / "rm" / "megatron_bond.json").write_text(json.dumps(meta))
        return cli(*_ckpt_args(d / "o", gemma, f"reward.ckpt={d / 'rm'}"))

    case("train_reward_vocab_mismatch", "has vocabulary 300, the policy 251", reward_vocab)

    def resume_changed(d):
        copy_run(d)
        return cli(*_train_args(d / "run", "model.hidden_size=32", "model.ffn_hidden_size=64"))

    case("train_resume_other_model", "cannot resume", resume_changed)
    case("train_resume_changed_reward", "reward.function: None -> 'tests.integration.test_numerics:huge_reward' changed",
         lambda d: (copy_run(d), cli(*_train_args(d / "run", "reward.function=tests.integration.test_numerics:huge_reward")))[1])
    case("train_resume_changed_lr", "optimizer.lr: 0.00025 -> 0.001 changed since the run started",
         lambda d: (copy_run(d), cli(*_train_args(d / "run", "optimizer.lr=1e-3")))[1])
    case("train_allow_changed_unknown", "run.allow_changed: 'optimizer.lrr' is not a config key or section",
         lambda d: cli(*_train_args(d / "o", "run.allow_changed=[optimizer.lrr]")))
    case("train_adam_beta_out_of_range", "optimizer.adam_beta1: must lie in [0, 1), got 1.5",
         lambda d: cli(*_train_args(d / "o", "optimizer.adam_beta1=1.5")))
    case("train_new_tokens_past_context", "rollout.max_new_tokens: 200 leaves no room for a prompt",
         lambda d: cli(*_train_args(d / "o", "rollout.max_new_tokens=200")))
    case("train_rows_past_context", "data.max_prompt_tokens: 100 + rollout.max_new_tokens 40 = 140 tokens exceed",
         lambda d: cli(*_train_args(d / "o", "data.max_prompt_tokens=100", "rollout.max_new_tokens=40")))
    case("train_token_budget_below_a_row", "train.max_tokens_per_microbatch: 60 tokens hold no row",
         lambda d: cli(*_train_args(d / "o", "model.family=gemma", "train.packing=true", "train.max_tokens_per_microbatch=60")))
    case("train_packing_local_gpt_attention", "train.packing: the gpt family's local attention",
         lambda d: cli(*_train_args(d / "o", "train.packing=true")))
    case("train_kv_budget_below_a_wave", "rollout.max_kv_tokens: 100 tokens hold less than one sample",
         lambda d: cli(*_train_args(d / "o", "rollout.max_kv_tokens=100")))
    case("train_wandb_mode_boolean", "logging.wandb_mode: YAML reads on/off/yes/no/true/false as a boolean",
         lambda d: cli(*_train_args(d / "o", "logging.wandb_mode=on")))
    case("train_model_key_contradicts_checkpoint", "model.num_query_groups: the recipe says 2, policy.ckpt",
         lambda d: cli(*_train_args(d / "o", f"policy.ckpt={gemma}", "reward.function=megatron_bond.train.rewards:tiny_reward")))

    case("train_lora_unknown_target", "model.lora.targets: 'q_proj' is not a linear adapters can go on",
         lambda d: cli(*_train_args(d / "o", "model.lora.rank=4", "model.lora.targets=[linear_qkv,q_proj]")))
    case("train_lora_rank_above_dimension", "model.lora.rank: 100 exceeds linear_qkv's dimension 64",
         lambda d: cli(*_train_args(d / "o", "model.lora.rank=100")))

    def resume_lora_other_base(d):  # adapters saved over a base whose fingerprint is not policy.ckpt's
        dist = copy_run(d)
        for name, edit in (("config.json", lambda c: c["model"]["lora"].update(rank=4)),
                           ("trainer.json", lambda c: c["inputs"].update({"policy.ckpt": "0123456789abcdef"}))):
            saved = json.loads((dist.parent / name).read_text())
            edit(saved)
            (dist.parent / name).write_text(json.dumps(saved))
        return cli(*_train_args(d / "run", "model.lora.rank=4", "run.allow_changed=[policy.ckpt]"))

    case("train_resume_lora_other_base", "policy.ckpt: 'fingerprint 0123456789abcdef' -> 'fingerprint None' changed",
         resume_lora_other_base)

    def resume_distributed_optimizer_state(d):  # saved on GPUs by the distributed optimizer
        dist = copy_run(d)
        trainer = dist.parent / "trainer.json"
        trainer.write_text(json.dumps({**json.loads(trainer.read_text()), "optimizer_sharding": "dp_reshardable"}))
        return cli(*_train_args(d / "run"))

    case("train_resume_sharded_optimizer_state", "saved by the distributed optimizer; set optimizer.distributed=true",
         resume_distributed_optimizer_state)

    def truncated_ckpt(d):
        dist = copy_run(d)
        shard = sorted(dist.glob("*.distcp"))[0]
        shard.write_bytes(shard.read_bytes()[:100])
        return cli(*_train_args(d / "run"))

    case("train_truncated_checkpoint", "is truncated", truncated_ckpt)

    def missing_shard(d):
        dist = copy_run(d)
        sorted(dist.glob("*.distcp"))[-1].unlink()
        return cli(*_train_args(d / "run"))

    case("train_missing_checkpoint_file", "is missing: the checkpoint is incomplete", missing_shard)

    def missing_rng(d):
        for f in (copy_run(d).parent / "rng").glob("*.pt"):
            f.unlink()
        return cli(*_train_args(d / "run"))

    case("train_missing_rng_state", "pp0_tp0_dp0.pt is missing: the checkpoint is incomplete", missing_rng)

    def dangling_latest(d):
        copy_run(d)
        (d / "run" / "checkpoints" / "latest").write_text("step_0000099")
        return cli(*_train_args(d / "run"))

    case("train_latest_names_missing_step", "missing or incomplete", dangling_latest)

    def corrupt_bytes(dist, where: str = "data"):
        """4 KB of 0xff in the largest item of a shard: in the middle of its bytes (``data``: fp32 NaNs where
        the weights were) or at its start (``header``: the item's serialisation, which no longer unpickles).
        Aimed through the checkpoint's own metadata, so the same bytes are hit whatever else the shard holds."""
        from torch.distributed.checkpoint import FileSystemReader

        item = max(FileSystemReader(str(dist)).read_metadata().storage_data.values(), key=lambda i: i.length)
        assert item.length >= 3 * 4096, "the test model's largest tensor is too small to aim inside it"
        start = item.offset + (item.length // 2 - 2048 if where == "data" else 0)
        shard = dist / item.relative_path
        data = bytearray(shard.read_bytes())
        data[start: start + 4096] = b"\xff" * 4096
        shard.write_bytes(bytes(data))

    case("train_corrupted_checkpoint_bytes", "holds non-finite values (NaN or inf): the checkpoint is damaged",
         lambda d: (corrupt_bytes(copy_run(d)), cli(*_train_args(d / "run", "train.steps=3")))[1])
    # train: data and rewards
    case("train_reward_function_missing", "cannot load 'nope:fn'", lambda d: cli(*_train_args(d / "o", "reward.function=nope:fn")))
    case("train_non_finite_reward", "rewards must be finite numbers",
         lambda d: cli(*_train_args(d / "o", "reward.function=tests.integration.test_refusals:nan_reward")))
    case("train_missing_prompt_file", "does not exist", lambda d: cli(*_train_args(d / "o", f"data.path={d / 'p.jsonl'}")))

    def empty_prompts(d):
        (d / "p.jsonl").write_text("")
        return cli(*_train_args(d / "o", f"data.path={d / 'p.jsonl'}"))

    case("train_empty_prompt_file", "p.jsonl", empty_prompts)

    def long_prompts(d):
        (d / "p.jsonl").write_text("".join(json.dumps({"tokens": [5] * 200}) + "\n" for _ in range(4)))
        return cli(*_train_args(d / "o", f"data.path={d / 'p.jsonl'}"))

    case("train_prompts_longer_than_context", "4 longer ones dropped", long_prompts)

    def prompt_ids_outside_vocab(d):
        (d / "p.jsonl").write_text(json.dumps({"tokens": [5, 9999]}) + "\n")
        return cli(*_train_args(d / "o", f"data.path={d / 'p.jsonl'}"))

    case("train_prompt_ids_outside_vocab", "tokens must be a non-empty list of ids in [0, 256)", prompt_ids_outside_vocab)

    # score / generate
    def rows_file(d, rows):
        (d / "in.jsonl").write_text("".join(json.dumps({"tokens": r}) + "\n" for r in rows))
        return d / "in.jsonl"

    score = lambda d, *extra, ckpt=gemma: cli("score", "--ckpt", ckpt, "--input", rows_file(d, [[5, 6, 7]]),  # noqa: E731
                                              "--output", d / "out.jsonl", *extra)
    case("score_missing_input", "--input", lambda d: cli("score", "--ckpt", gemma, "--input", d / "nope.jsonl", "--output", d / "o.jsonl"))
    case("score_batch_size_0", "must be >= 1", lambda d: score(d, "--batch-size", "0"))
    case("score_output_dir_missing", "does not exist",
         lambda d: cli("score", "--ckpt", gemma, "--input", rows_file(d, [[5, 6]]), "--output", d / "x" / "o.jsonl"))

    def score_incomplete(d):
        shutil.copytree(gemma, d / "ck")
        sorted((d / "ck" / "model").glob("*.distcp"))[0].unlink()
        return score(d, ckpt=d / "ck")

    case("score_incomplete_checkpoint", "is missing: the checkpoint is incomplete", score_incomplete)
    case("score_output_is_a_directory", "is a directory: give a file path",
         lambda d: (d.joinpath("out.jsonl").mkdir(), score(d))[1])

    def not_utf8(d):
        (d / "in.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
        return cli("generate", "--ckpt", gemma, "--input", d / "in.jsonl", "--output", d / "o.jsonl")

    case("generate_input_not_utf8", "in.jsonl:1: not UTF-8 text", not_utf8)
    case("score_longer_than_context", "exceed max_seq_length 64",
         lambda d: cli("score", "--ckpt", gemma, "--input", rows_file(d, [[5] * 100]), "--output", d / "o.jsonl"))
    gen = lambda d, *extra: cli("generate", "--ckpt", gemma, "--input", rows_file(d, [[5, 6]]),  # noqa: E731
                                "--output", d / "o.jsonl", *extra)
    case("generate_zero_new_tokens", "--max-new-tokens must be >= 1", lambda d: gen(d, "--max-new-tokens", "0"))
    case("generate_negative_new_tokens", "--max-new-tokens must be >= 1", lambda d: gen(d, "--max-new-tokens", "-3"))
    case("generate_greedy_with_temperature", "--greedy takes the argmax", lambda d: gen(d, "--greedy", "--temperature", "0.7"))
    case("generate_stop_id_outside_vocab", "--stop-id 99999 is outside the vocabulary", lambda d: gen(d, "--stop-id", "99999"))
    case("generate_prompt_longer_than_context", "prompt 1 (60 tokens) + max_new_tokens (16) exceed the model's max_seq_length (64)",
         lambda d: cli("generate", "--ckpt", gemma, "--input", rows_file(d, [[5] * 60]), "--output", d / "o.jsonl",
                       "--max-new-tokens", "16"))
    # config / simulate
    case("config_yaml_syntax", "bad.yaml:3: not valid YAML", lambda d: (bad_yaml(d), cli("config", d / "bad.yaml"))[1])
    case("config_recipe_not_utf8", "bin.yaml is not UTF-8 text",
         lambda d: (d.joinpath("bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff"), cli("config", d / "bin.yaml"))[1])
    case("config_recipe_is_a_directory", "is a directory: give a YAML file", lambda d: cli("config", d))
    case("config_two_reward_sources", "reward: 2 sources are given (reward.function, reward.url)",
         lambda d: cli("config", RECIPE, "reward.url=http://h/r", "reward.function=m:f"))
    case("config_delete_missing_key", "override ~model.nope: the recipe sets no such key", lambda d: cli("config", RECIPE, "~model.nope"))
    case("config_vllm_pipeline", "rollout.engine: vllm runs at pipeline size 1 (got pp=2)",
         lambda d: cli("config", RECIPE, "rollout.engine=vllm", "parallel.pp=2"))
    case("config_model_key_contradicts_checkpoint", "model.num_query_groups: the recipe says 2, policy.ckpt",
         lambda d: cli("config", RECIPE, f"policy.ckpt={gemma}"))
    case("simulate_too_large", "100000000 sequences need about", lambda d: cli("simulate", "--vocab", "10", "--length", "8"))
    case("simulate_beta_2", "--beta must lie in [0, 1]", lambda d: cli("simulate", "--beta", "2"))
    case("simulate_vocab_0", "--vocab must be >= 2", lambda d: cli("simulate", "--vocab", "0"))

    # converters
    def hf_copy(d, edit=None):
        shutil.copytree(hf, d / "hf")
        if edit:
            edit(d / "hf")
        return ("hf_to_megatron", d / "hf", d / "out")

    def truncate_weights(p):
        w = p / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    def edit_config(value):
        return lambda p: (p / "config.json").write_text(value)

    cfg = json.loads((hf / "config.json").read_text())
    def nan_weight(p):
        from safetensors.torch import load_file, save_file

        weights = load_file(p / "model.safetensors")
        weights["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
        save_file(weights, p / "model.safetensors", metadata={"format": "pt"})

    case("convert_unusable_tokenizer", "tokenizer.json: not a usable tokenizer",
         lambda d: hf_copy(d, lambda p: (p / "tokenizer.json").write_text("{not json")))
    case("convert_non_finite_weight", "model.layers.0.mlp.up_proj.weight holds non-finite values", lambda d: hf_copy(d, nan_weight))
    case("convert_truncated_weights", "model.safetensors: not a readable safetensors file", lambda d: hf_copy(d, truncate_weights))
    case("convert_config_not_json", "config.json:1: not valid JSON", lambda d: hf_copy(d, edit_config("{not json")))
    case("convert_config_a_list", "expected a JSON object, got a list", lambda d: hf_copy(d, edit_config("[1, 2]")))
    case("convert_config_heads_not_integer", "non-integer 'num_attention_heads' ('4')",
         lambda d: hf_copy(d, edit_config(json.dumps({**cfg, "num_attention_heads": "4"}))))
    case("convert_config_missing_heads", "config.json does not match the weights",  # transformers' default 8 heads
         lambda d: hf_copy(d, edit_config(json.dumps({k: v for k, v in cfg.items() if k != "num_attention_heads"}))))
    case("convert_config_missing_vocab", "has no vocab_size, so transformers' default vocab_size=256000, but "
         "model.embed_tokens.weight has 251 rows", lambda d: hf_copy(d, edit_config(json.dumps({k: v for k, v in cfg.items() if k != "vocab_size"}))))
    case("convert_config_missing_head_dim", "has no head_dim, and the weights cannot tell the head count from the head dim",
         lambda d: hf_copy(d, edit_config(json.dumps({k: v for k, v in cfg.items() if k != "head_dim"}))))

    def out_under_file(d):
        shutil.copytree(hf, d / "hf")
        (d / "file").write_text("")
        return ("hf_to_megatron", d / "hf", d / "file" / "out")

    case("convert_out_under_a_file", "cannot write there", out_under_file)

    def out_is_a_file(d):
        shutil.copytree(hf, d / "hf")
        (d / "file").write_text("mine")
        return ("hf_to_megatron", d / "hf", d / "file", True)  # with --overwrite

    case("convert_overwrite_a_file", "is a file, not a directory", out_is_a_file)

    def export_incomplete(d):
        shutil.copytree(gemma, d / "ck")
        sorted((d / "ck" / "model").glob("*.distcp"))[-1].unlink()
        return ("megatron_to_hf", d / "ck", d / "out")

    case("export_incomplete_checkpoint", "is missing: the checkpoint is incomplete", export_incomplete)

    def export_corrupted(d):
        shutil.copytree(gemma, d / "ck")
        corrupt_bytes(d / "ck" / "model")
        return ("megatron_to_hf", d / "ck", d / "out")

    case("export_corrupted_checkpoint_bytes", "holds non-finite values (NaN or inf): the checkpoint is damaged", export_corrupted)

    def export_unreadable(d):
        shutil.copytree(gemma, d / "ck")
        corrupt_bytes(d / "ck" / "model", where="header")
        return ("megatron_to_hf", d / "ck", d / "out")

    case("export_unreadable_shard", "a shard is unreadable", export_unreadable)

    snapshot = {k: _listing(v[2]) for k, v in expected.items()}  # inputs are in place now
    results = run_ranks("tests.integration.refusal_bodies:run_cases", 1, {"cases": cases}, timeout=600,
                        env={"WANDB_BASE_URL": "http://127.0.0.1:9"})[0]
    for fd in held:
        os.close(fd)
    return {name: (message, *results[name], snapshot[name], _listing(d))
            for name, (message, _, d) in expected.items()}


CASE_NAMES = [
    "train_unknown_key", "train_bad_type", "train_bad_value", "train_missing_recipe", "train_yaml_syntax",
    "train_tp_vs_heads", "train_pp_vs_layers", "train_world_vs_layout", "train_batch_vs_microbatch",
    "train_batch_of_one", "train_bf16_on_cpu", "train_virtual_pipeline", "train_unwritable_output", "train_output_dir_in_use", "train_wandb_online_unreachable", "train_missing_policy_ckpt",
    "train_reward_ckpt_not_reward", "train_reward_vocab_mismatch", "train_resume_other_model",
    "train_resume_changed_reward", "train_resume_changed_lr", "train_allow_changed_unknown",
    "train_adam_beta_out_of_range", "train_new_tokens_past_context", "train_wandb_mode_boolean",
    "train_model_key_contradicts_checkpoint",
    "train_resume_sharded_optimizer_state",
    "train_lora_unknown_target", "train_lora_rank_above_dimension", "train_resume_lora_other_base",
    "train_truncated_checkpoint", "train_missing_checkpoint_file", "train_missing_rng_state",
    "train_latest_names_missing_step", "train_corrupted_checkpoint_bytes", "train_rows_past_context",
    "train_token_budget_below_a_row", "train_packing_local_gpt_attention", "train_kv_budget_below_a_wave",
    "train_reward_function_missing", "train_non_finite_reward", "train_missing_prompt_file",
    "train_empty_prompt_file", "train_prompts_longer_than_context", "train_prompt_ids_outside_vocab",
    "score_missing_input", "score_batch_size_0", "score_output_dir_missing", "score_incomplete_checkpoint",
    "score_longer_than_context", "score_output_is_a_directory", "generate_input_not_utf8", "generate_zero_new_tokens", "generate_negative_new_tokens",
    "generate_greedy_with_temperature", "generate_stop_id_outside_vocab", "generate_prompt_longer_than_context",
    "config_yaml_syntax", "config_recipe_not_utf8", "config_recipe_is_a_directory", "config_two_reward_sources",
    "config_delete_missing_key", "config_vllm_pipeline", "config_model_key_contradicts_checkpoint", "simulate_too_large", "simulate_beta_2", "simulate_vocab_0",
    "convert_unusable_tokenizer", "convert_non_finite_weight", "convert_truncated_weights", "convert_config_not_json", "convert_config_a_list",
    "convert_config_heads_not_integer", "convert_config_missing_heads", "convert_config_missing_vocab",
    "convert_config_missing_head_dim", "convert_out_under_a_file", "convert_overwrite_a_file", "export_incomplete_checkpoint",
    "export_corrupted_checkpoint_bytes", "export_unreadable_shard",
]


def test_the_catalogue_is_complete(catalogue):
    assert sorted(catalogue) == sorted(CASE_NAMES) and len(CASE_NAMES) >= 25


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_refused_in_one_line(catalogue, name):
    message, code, stderr, trace, before, after = catalogue[name]
    assert trace is None, trace
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, stderr)
    assert message in lines[0], lines[0]
    assert after == before, sorted(set(after) ^ set(before))  # nothing partial left behind


def test_converter_cli_prints_one_line(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("[1]")
    done = convert(tmp_path / "hf", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "expected a JSON object" in done.stderr


def test_config_into_a_closed_pipe_is_quiet():
    done = subprocess.run(f"{sys.executable} -m megatron_bond.cli config {RECIPE} | head -1", shell=True, cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "{" and done.stderr == ""


def test_sigint_during_a_conversion_exits_promptly_and_leaves_nothing(tmp_path):
    """Ctrl-C while the checkpoint is being written: the command ends within seconds (it stayed alive
    for 10+ minutes, waiting on its writer processes) and no partial directory remains."""
    build_hf_model("gemma2_gqa", tmp_path / "hf")
    proc = subprocess.Popen([sys.executable, "tools/convert_hf_to_megatron.py", "--hf-dir", str(tmp_path / "hf"),
                             "--out-dir", str(tmp_path / "out")], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*/model/*")):  # the save has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20
    assert proc.returncode == 130 and "interrupted; nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_unverified_megatron_core_is_refused_in_one_line(tmp_path):
    """pip picks the newest megatron-core on Python >= 3.12: the CLI refuses an unverified one before any
    work (runtime/megatron_compat.py), naming the pin and the override."""
    fake = ("import importlib.metadata as m, sys; real = m.version; "
            "m.version = lambda n: '0.17.0' if n == 'megatron-core' else real(n); "
            "from megatron_bond.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", fake, *_train_args(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "megatron-core 0.17.0 is not verified (verified: 0.16.1): install megatron-core==0.16.1" in lines[0]
    assert "MEGATRON_BOND_UNVERIFIED_MEGATRON_CORE=1" in lines[0] and not out.exists()
