"""`make demo`: J-BOND end to end on a small text task, through the commands a user runs.

1. build the task (megatron_bond/demo/task.py): corpus, tokenizer, a pre-trained policy and a reward
   model imitating "colour words per 10 words", as Hugging Face checkpoints; prompts as a jsonl file;
2. convert both with tools/convert_hf_to_megatron.py;
3. J-BOND at TP=2 under torchrun (recipes/demo.yaml);
4. export the policy with tools/convert_megatron_to_hf.py, load it in transformers and compare its
   log-probs with `megatron-bond score` on the Megatron checkpoint;
5. plot quantile/ref against kl/ref beside the task's exact (tie-aware) Best-of-N curve and the measured
   Best-of-N points, and decode samples before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], what: str, quiet: bool = False) -> None:
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=quiet)
    if done.returncode:
        tail = (done.stderr or "")[-2000:] if quiet else ""
        raise SystemExit(f"demo: {what} failed (exit {done.returncode})\n{tail}")


def _tool(name: str, *args) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / name), *map(str, args)]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "megatron_bond.cli", *map(str, args)]


def check_export(policy_ckpt: Path, hf_dir: Path, prompts: list[str], out: Path) -> float:
    """Largest |Δ| between transformers' log-probs of the exported policy and `megatron-bond score`
    on the Megatron checkpoint, over a few tokenized prompts."""
    import sentencepiece
    import torch
    import transformers

    sp = sentencepiece.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    rows = [[2] + sp.encode(p) for p in prompts]
    (out / "check_in.jsonl").write_text("".join(json.dumps({"tokens": r}) + "\n" for r in rows))
    _run(_cli("score", "--ckpt", policy_ckpt, "--input", out / "check_in.jsonl", "--output", out / "check_out.jsonl"),
         "scoring the trained policy", quiet=True)
    ours = [json.loads(line)["logprobs"] for line in (out / "check_out.jsonl").read_text().splitlines()]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    worst = 0.0
    for row, got in zip(rows, ours):
        with torch.no_grad():
            logits = model(torch.tensor([row])).logits[0, :-1].float()
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(row[1:]).unsqueeze(-1)).squeeze(-1)
        worst = max(worst, (torch.tensor(got) - ref).abs().max().item())
    return worst


def samples(ckpt: Path, prompts_file: Path, out: Path, max_new_tokens: int) -> list[dict]:
    _run(_cli("generate", "--ckpt", ckpt, "--input", prompts_file, "--output", out, "--max-new-tokens",
              max_new_tokens, "--seed", "7", "--batch-size", "8"), f"sampling from {ckpt}", quiet=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_bond.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo", help="output directory (replaced)")
    p.add_argument("--steps", type=int, default=200, help="J-BOND steps")
    p.add_argument("--pretrain-steps", type=int, default=300, help="steps of policy and reward-model training")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the J-BOND run (torchrun ranks)")
    args = p.parse_args(argv)
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    start = time.perf_counter()
    if out.exists():
        print(f"replacing {out}", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True)

    def log(message: str) -> None:
        print(f"  [{time.perf_counter() - start:5.0f}s] {message}", flush=True)

    print("[1/5] building the task: corpus, tokenizer, policy and reward model (Hugging Face checkpoints)", flush=True)
    from megatron_bond.demo.task import build

    info = build(out / "task", policy_steps=args.pretrain_steps, reward_steps=args.pretrain_steps, log=log)
    log(f"reward model imitates 'colour words per 10 words' with mean absolute error {info['reward_model_mae']:.2f}")

    print("[2/5] converting both with tools/convert_hf_to_megatron.py", flush=True)
    for name in ("policy", "reward"):
        _run(_tool("convert_hf_to_megatron.py", "--hf-dir", out / "task" / f"hf_{name}", "--out-dir", out / f"ckpt_{name}"),
             f"converting the {name}", quiet=True)
        log(f"{out / f'ckpt_{name}'}")

    print(f"[3/5] J-BOND at TP={args.tp} under torchrun ({args.steps} steps)", flush=True)
    train_dir = out / "train"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.tp}",
          "-m", "megatron_bond.cli", "train", "recipes/demo.yaml", f"parallel.tp={args.tp}",
          f"train.steps={args.steps}", f"policy.ckpt={out / 'ckpt_policy'}", f"reward.ckpt={out / 'ckpt_reward'}",
          f"data.path={out / 'task' / 'prompts.jsonl'}", f"run.output_dir={train_dir}"], "training")

    print("[4/5] exporting with tools/convert_megatron_to_hf.py and checking it in transformers", flush=True)
    _run(_tool("convert_megatron_to_hf.py", "--ckpt-dir", train_dir / "policy", "--out-dir", out / "hf_jbond"),
         "exporting", quiet=True)
    shown = [json.loads(line)["text"] for line in (out / "task" / "prompts.jsonl").read_text().splitlines()[:6]]
    worst = check_export(train_dir / "policy", out / "hf_jbond", shown, out)
    log(f"transformers loads {out / 'hf_jbond'}; its log-probs equal the Megatron policy's within {worst:.1e}")
    if worst > 1e-4:
        raise SystemExit(f"demo: the exported policy's log-probs differ by {worst:.2e} (> 1e-4)")

    print("[5/5] plot and samples", flush=True)
    from megatron_bond.demo.task import rule
    from megatron_bond.demo.plot import plot_quantile_vs_kl

    from megatron_bond.config import load_config

    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    evals, steps = [r for r in rows if r.get("eval")], [r for r in rows if not r.get("eval")]
    ref_rewards = [json.loads(line)["rewards_ref"] for line in (train_dir / "samples" / "step-0.jsonl").read_text().splitlines()]
    prompts_file = out / "sample_prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in shown))
    max_new = load_config(str(ROOT / "recipes" / "demo.yaml"), []).rollout.max_new_tokens
    before = samples(out / "ckpt_policy", prompts_file, out / "samples_before.jsonl", max_new)
    after = samples(train_dir / "policy", prompts_file, out / "samples_after.jsonl", max_new)
    png = plot_quantile_vs_kl(evals, ref_rewards, out / "quantile_vs_kl.png", title=f"J-BOND, demo task (TP={args.tp})",
                              samples=[(p, b["text"], a["text"]) for p, b, a in zip(shown, before, after)],
                              caption=f"last step: length/policy {steps[-1]['length/policy']:.1f} tokens, "
                                      f"rollout/truncated_fraction {steps[-1]['rollout/truncated_fraction']:.3f}")
    lines = ["| prompt | before (π_ref) | after (J-BOND) |", "|---|---|---|"]
    for prompt, b, a in zip(shown, before, after):
        lines.append(f"| {prompt} | {b['text'].strip()} | {a['text'].strip()} |")
    share = lambda rs: sum(rule(p + " " + r["text"]) for p, r in zip(shown, rs)) / len(rs)  # noqa: E731
    ended = lambda rs: sum(r["tokens"][-1:] == [1] for r in rs)  # noqa: E731 (eos id 1)
    lines.append(f"\nColour words per 10 words (the rule, prompt and response): {share(before):.2f} before, "
                 f"{share(after):.2f} after; samples that ended with EOS: {ended(before)}/{len(before)} before, "
                 f"{ended(after)}/{len(after)} after.")
    (out / "samples.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)

    first, last = evals[0], evals[-1]
    num = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731 (null: below Best-of-1)
    print(f"\ndone in {time.perf_counter() - start:.0f}s: quantile/ref {first['quantile/ref']:.3f} -> "
          f"{last['quantile/ref']:.3f} ± {last['quantile/ref_se']:.3f} (mid-rank {last['quantile/ref_mid']:.3f}), "
          f"kl/ref {last['kl/ref']:.3f} ± {last['kl/ref_se']:.3f}, {num(last['kl/ratio_to_bon'])}× the task's Best-of-N KL "
          f"at that quantile (95 % {num(last['kl/ratio_to_bon_lo'])} to {num(last['kl/ratio_to_bon_hi'])}); "
          f"reward {first['reward/policy']:.2f} -> {last['reward/policy']:.2f}, Best-of-8 of π_ref {first['bon/reward@8']:.2f}")
    print(f"  plot:        {png}\n  samples:     {out / 'samples.md'}\n  metrics:     {train_dir / 'metrics.jsonl'}\n"
          f"  policy:      {train_dir / 'policy'} (Megatron), {out / 'hf_jbond'} (Hugging Face)\n"
          f"  checkpoints: {out / 'ckpt_policy'}, {out / 'ckpt_reward'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
