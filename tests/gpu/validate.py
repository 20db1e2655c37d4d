"""The prepared GPU validation (issue 35, point 5): ``bash tests/gpu/validate.sh OUT`` runs this per stage.

    python -m tests.gpu.validate OUT STAGE [--tiny]

Each stage appends JSON lines to OUT/validate.jsonl, the last with {"stage", "verdict", ...}; verdicts are
"passed", "failed" or "not validated: <why>" (Transformer Engine or vLLM absent, no CUDA: never "passed").
No downloads: every model is a random-init, Gemma-shaped Hugging Face model built here. ``--tiny`` shrinks
every shape so that the CPU test (tests/unit/test_gpu_validate.py) runs stages 0 and 1 in seconds.

0. versions against constraints/gpu.txt, the NCCL environment;
1. spec parity: random HF Gemma 2 (head dim 256, softcaps, window 128) and Gemma 3, 3 layers, hidden 1024,
   vocab 256k, 512 tokens sampled from the HF fp32 model: local and (if present) TE spec, each loading the
   converted checkpoint, against HF eager: fp32 max |Δ log p| <= 1e-4 (TE 1e-3); bf16 mean token KL to HF
   fp32 <= 2e-3 (the tokens are samples of HF fp32, so the mean of log p_hf - log p_ours estimates it);
2. a Gemma-2-9B-wide J-BOND run (4 layers, 16 prompts, 512 + 512 tokens): 4 steps with a checkpoint at 2,
   then the same command resumes; every ``mem/peak_gib/*`` against the planner (<= plan, >= 0.5 plan),
   ``mem/device_used_gib/*`` and ``time/*`` reported; the vLLM engine the same way where vLLM is installed;
3. one 9B-shaped layer at 4096 tokens, forward and backward: the allocator's growth against the planner's
   activation bytes;
4. the log-prob head benchmark at Gemma scale (benchmarks/logprob_head.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
NOT_VALIDATED = "not validated"


def emit(out: Path, row: dict) -> dict:
    with open(out / "validate.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def stage0(out: Path, tiny: bool) -> dict:
    pins = dict(line.split("==") for line in (ROOT / "constraints" / "gpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    found = {name: _version(name) for name in pins}
    row = {"stage": 0, "versions": found, "verified": pins,
           "differs": sorted(n for n, v in found.items() if v is not None and v.split("+")[0] != pins[n]),
           "absent": sorted(n for n, v in found.items() if v is None),
           "nccl_env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "GLOO_", "TORCH_NCCL"))},
           "cuda": torch.cuda.is_available(),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    row["verdict"] = ("passed" if found.get("megatron-core") == pins["megatron-core"] and torch.cuda.is_available()
                      else f"{NOT_VALIDATED}: no CUDA" if not torch.cuda.is_available() else "failed")
    return emit(out, row)


def _hf_model(family: str, tiny: bool, out_dir: Path):
    import transformers

    shape = (dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                  vocab_size=512, sliding_window=8, max_position_embeddings=64) if tiny else
             dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=4, num_key_value_heads=2, head_dim=256,
                  vocab_size=256000, sliding_window=128, max_position_embeddings=1024))
    common = dict(num_hidden_layers=3, pad_token_id=0, attn_implementation="eager", **shape)
    if family == "gemma2":
        config = transformers.Gemma2Config(attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                           query_pre_attn_scalar=shape["head_dim"], **common)
        cls = transformers.Gemma2ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(query_pre_attn_scalar=shape["head_dim"], **common)
        cls = transformers.Gemma3ForCausalLM
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # HF initialises them to 0 ((1 + w) = 1): make them matter
                p.normal_(0.0, 0.3)
    model.save_pretrained(out_dir)
    return model


def _score(ckpt: Path, rows: list[list[int]], impl: str, dtype: str) -> list[torch.Tensor]:
    from megatron_bond.commands.score import score_rows
    from megatron_bond.config import ParallelConfig
    from megatron_bond.models.checkpoint import CONFIG_FILE, load_model_checkpoint, read_checkpoint_config
    from megatron_bond.runtime import destroy_distributed, init_distributed

    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    meta["model"].update(transformer_impl=impl, params_dtype=dtype)
    (ckpt / CONFIG_FILE).write_text(json.dumps(meta))
    parallel = ParallelConfig()
    init_distributed(parallel, seed=0)
    try:
        cfg = read_checkpoint_config(ckpt, parallel)
        return [torch.tensor(s, dtype=torch.float64) for s in score_rows(load_model_checkpoint(ckpt, cfg), cfg, rows, 1)]
    finally:
        destroy_distributed()


def stage1(out: Path, tiny: bool) -> dict:
    from megatron_bond.convert.convert import hf_to_megatron
    from megatron_bond.models.spec import te_available

    impls = ["local"] + (["transformer_engine"] if te_available() else [])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results, ok = [], True
    for family in ("gemma2", "gemma3"):
        with tempfile.TemporaryDirectory() as tmp:
            model = _hf_model(family, tiny, Path(tmp) / "hf")
            hf_to_megatron(Path(tmp) / "hf", Path(tmp) / "ckpt")
            model = model.to(device)
            length = 32 if tiny else 512
            gen = torch.Generator(device=device).manual_seed(0)
            with torch.no_grad():  # rows sampled from HF fp32: their mean log-ratio estimates the KL
                rows = model.generate(torch.ones(2, 1, dtype=torch.long, device=device) * 2, do_sample=True,
                                      max_new_tokens=length - 1, min_new_tokens=length - 1, top_k=0,
                                      generator=gen) if not tiny else torch.randint(1, 512, (2, length), generator=gen,
                                                                                    device=device)
                logits = model(rows).logits.double()
            ref = [torch.log_softmax(lg[:-1], -1).gather(-1, r[1:, None])[:, 0].cpu() for lg, r in zip(logits, rows)]
            rows = rows.tolist()
            model.cpu()
            for impl in impls:
                for dtype in ("float32", "bfloat16") if torch.cuda.is_available() else ("float32",):
                    got = _score(Path(tmp) / "ckpt", rows, impl, dtype)
                    diff = torch.cat([g - r for g, r in zip(got, ref)])
                    row = {"stage": 1, "family": family, "impl": impl, "dtype": dtype,
                           "max_abs_dlogp": diff.abs().max().item(), "mean_token_kl": (-diff).mean().item()}
                    bound = (1e-4 if impl == "local" else 1e-3) if dtype == "float32" else 2e-3
                    row["pass"] = (row["max_abs_dlogp"] if dtype == "float32" else abs(row["mean_token_kl"])) <= bound
                    ok &= row["pass"]
                    results.append(emit(out, row))
    verdict = "passed" if ok else "failed"
    te = "passed (TE loads the converted checkpoint)" if te_available() and ok else (
        f"{NOT_VALIDATED}: Transformer Engine or CUDA absent" if not te_available() else "failed")
    return emit(out, {"stage": 1, "verdict": verdict if torch.cuda.is_available() else f"{NOT_VALIDATED}: no CUDA "
                      f"(CPU fp32 parity {verdict})", "te": te, "rows": len(results)})


NINE_B_WIDE = ["model.num_layers=4", "model.hidden_size=3584", "model.ffn_hidden_size=14336",
               "model.num_attention_heads=16", "model.num_query_groups=8", "model.kv_channels=256",
               "model.vocab_size=256000", "model.max_seq_length=1024", "policy.dtype=bfloat16",
               "train.global_batch_size=16", "parallel.micro_batch_size=1", "data.max_prompt_tokens=512",
               "rollout.max_new_tokens=512", "data.eval_size=16", "train.eval_ref_samples=2", "train.eval_every=0",
               "train.steps=4", "checkpoint.every=2", "logging.wandb_mode=disabled", "logging.progress=false"]


def _plan(overrides: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "tools/plan_memory.py", "recipes/tiny_cpu.yaml", *overrides, "--nodes", "1",
                           "--gpus-per-node", "1"], cwd=ROOT, capture_output=True, text=True)
    return {m.group(1): float(m.group(2)) * (1 / 1024 if m.group(3) == "MiB" else 1)
            for m in re.finditer(r"^\s+(\w+): ([\d.]+) (GiB|MiB)\s*(<- largest)?$", done.stdout, re.M)}


def stage2(out: Path, tiny: bool) -> dict:
    if not torch.cuda.is_available():
        return emit(out, {"stage": 2, "verdict": f"{NOT_VALIDATED}: no CUDA"})
    engines = ["native"] + (["vllm"] if _version("vllm") else [])
    verdicts = []
    for engine in engines:
        run = out / f"jbond_{engine}"
        overrides = [*NINE_B_WIDE, f"rollout.engine={engine}", f"run.output_dir={run}"]
        if engine == "vllm":  # vLLM builds its model from a checkpoint's hf/config.json
            verdicts.append(f"vllm: {NOT_VALIDATED}: needs a converted 9B-wide checkpoint (policy.ckpt) here")
            emit(out, {"stage": 2, "engine": engine, "verdict": verdicts[-1]})
            continue
        times = []
        for attempt in ("start", "resume"):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "megatron_bond.cli", "train", "recipes/tiny_cpu.yaml", *overrides],
                                  cwd=ROOT, capture_output=True, text=True, timeout=240)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                verdicts.append(f"{engine}: failed")
                emit(out, {"stage": 2, "engine": engine, "attempt": attempt, "error": done.stderr[-2000:]})
                break
        else:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            plan = _plan([o for o in overrides if not o.startswith("run.")])
            peaks = {}
            for r in rows:
                for k, v in r.items():
                    if k.startswith("mem/"):
                        peaks[k] = max(peaks.get(k, 0.0), v)
            checks = {k: (v, plan.get(k.rsplit("/", 1)[1])) for k, v in peaks.items() if k.startswith("mem/peak_gib/")}
            good = all(p is not None and 0.5 * p <= v <= p for v, p in checks.values())
            timing = {k: v for r in rows for k, v in r.items() if k.startswith("time/")}
            verdicts.append(f"{engine}: {'passed' if good else 'failed'}")
            emit(out, {"stage": 2, "engine": engine, "measured_vs_plan_gib": checks, "device_used_gib":
                       {k: v for k, v in peaks.items() if k.startswith("mem/device_used_gib/")}, "time": timing,
                       "wall_s": times, "resumed": "resuming from" in done.stdout + done.stderr, "pass": good})
    if len(engines) == 1:
        verdicts.append(f"vllm: {NOT_VALIDATED}: vLLM is not installed")
    return emit(out, {"stage": 2, "verdict": "; ".join(verdicts)})


def stage3(out: Path, tiny: bool) -> dict:
    if not torch.cuda.is_available():
        return emit(out, {"stage": 3, "verdict": f"{NOT_VALIDATED}: no CUDA"})
    from megatron_bond.config import load_config
    from megatron_bond.memory import GiB, activation_bytes
    from megatron_bond.models.gpt import build_model
    from megatron_bond.runtime import destroy_distributed, init_distributed

    cfg = load_config("recipes/tiny_cpu.yaml", [o for o in NINE_B_WIDE if not o.startswith("model.num_layers")]
                      + ["model.num_layers=1", "model.max_seq_length=4096", "model.params_dtype=bfloat16"])
    init_distributed(cfg.parallel, seed=0)
    try:
        (model,) = build_model(cfg)
        tokens = torch.randint(1, 256000, (1, 4096), device="cuda")
        positions = torch.arange(4096, device="cuda")[None]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        hidden = model.decoder(model.embedding(tokens, positions), None)  # the layer; the head is stage 4's
        saved = torch.cuda.memory_allocated() - base
        hidden.float().pow(2).mean().backward()
        planned = activation_bytes(cfg.model, 1, 1, 4096, 1, last_stage=False)
        row = {"stage": 3, "saved_gib": saved / GiB, "planned_gib": planned / GiB,
               "peak_gib": (torch.cuda.max_memory_allocated() - base) / GiB}
        row["verdict"] = "passed" if abs(saved - planned) <= 0.25 * saved else "failed"
        return emit(out, row)
    finally:
        destroy_distributed()


def stage4(out: Path, tiny: bool) -> dict:
    if not torch.cuda.is_available():
        return emit(out, {"stage": 4, "verdict": f"{NOT_VALIDATED}: no CUDA"})
    done = subprocess.run([sys.executable, "benchmarks/logprob_head.py", "--tokens", "8192", "--hidden", "3584",
                           "--vocab", "256000", "--dtype", "bf16", "--impl", "naive,chunked,fused,triton", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=200)
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            emit(out, {"stage": 4, **json.loads(line)})
    return emit(out, {"stage": 4, "verdict": "passed" if done.returncode == 0 else "failed",
                      **({"error": done.stderr[-2000:]} if done.returncode else {})})


STAGES = {"0": stage0, "1": stage1, "2": stage2, "3": stage3, "4": stage4}


def main(argv: list[str]) -> int:
    out, stage, tiny = Path(argv[0]), argv[1], "--tiny" in argv
    out.mkdir(parents=True, exist_ok=True)
    try:
        row = STAGES[stage](out, tiny)
    except Exception as err:  # a stage that crashes is a failed stage; the next ones still run
        row = emit(out, {"stage": int(stage), "verdict": "failed", "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()[-3000:]})
    with open(out / "summary.txt", "a") as f:
        f.write(f"stage {stage}: {row['verdict']}\n")
    return 0 if not row["verdict"].startswith("failed") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
