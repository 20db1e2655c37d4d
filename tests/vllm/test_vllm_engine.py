"""The colocated vLLM engine (rollout/vllm_engine.py) against references nobody here wrote:
transformers' greedy decoding of tiny Gemma 1/2/3 (head dim 32, vLLM's CPU minimum), and the trainer's own
re-scoring of every sampled token; each refit (policy, anchor, reference) reaches the engine's outputs; a
J-BOND run at TP=1 and TP=2 samples through it; a killed run resumes to the same rows."""

import json
import math
import random

import pytest
import torch

from tests.harness import UNTIMED, run_ranks
from tests.integration.hf_models import VOCAB
from tests.integration.conftest import converted  # noqa: F401 (the fixture)
from tests.integration.test_generate import NEW, hf_greedy, prompts
from tests.integration.test_resume import ARGS, kill_all, rows, wait_for_step

pytestmark = pytest.mark.distributed

# Engine log-probs against the trainer's re-scoring of the same tokens, fp32 on both sides: the same
# weights through two implementations (vLLM's CPU kernels, Megatron's fused head), so the gap is fp32
# rounding of a few reductions over ≤ 64 positions and a 251-way softmax, ~1e-6 (measured ≤ 1.5e-6).
# A refit that did not reach the engine is off by the models' difference (here > 0.05).
LOGP_TOL = 1e-4


# (variant, tp, ranks): ranks / tp data-parallel replicas. Gemma 2 at DP=2 goes in batches of one prompt:
# of its 3 prompts the second batch has one, so one replica has none and must still join vLLM's steps.
LAYOUTS = [(v, 1, 1) for v in ("gemma_mqa_hd32", "gemma3_gqa_hd32")] + [("gemma2_gqa_hd32", 1, 2),
                                                                       ("gemma3_gqa_hd32", 2, 2)]


@pytest.mark.parametrize("variant,tp,ranks", LAYOUTS, ids=[f"{v}-tp{tp}-dp{n // tp}" for v, tp, n in LAYOUTS])
def test_cli_greedy_equals_transformers(converted, vllm_python, tmp_path, variant, tp, ranks):  # noqa: F811
    root, model, _, _ = converted(variant)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"tokens": p}) + "\n" for p in prompts()))
    argv = ["generate", "--engine", "vllm", "--ckpt", str(root / "ckpt"), "--tp", str(tp), "--greedy",
            "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
            "--max-new-tokens", str(NEW), "--stop-id", "250", "--batch-size", "1"]
    assert run_ranks("tests.integration.bodies:cli", ranks, {"argv": argv}, timeout=240, python=vllm_python) == [0] * ranks
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    want = [hf_greedy(model, p) for p in prompts()]
    cut = [w[: w.index(250) + 1] if 250 in w else w for w in want]  # the extra stop id ends a response
    assert [r["tokens"] for r in got] == cut
    assert all(len(r["logprobs"]) == len(r["tokens"]) and all(lp <= 0 for lp in r["logprobs"]) for r in got)


@pytest.fixture(scope="module")
def refits(converted, vllm_python):  # noqa: F811
    """Two different Gemma 2 models (seeds 0 and 1), sampled at temperature 1 after each refit, at TP=2."""
    root, _, _, _ = converted("gemma2_gqa_hd32")
    other = root.parent / "gemma2_seed1"
    if not other.exists():
        from tests.integration.conftest import convert
        from tests.integration.hf_models import build_hf_model

        build_hf_model("gemma2_gqa_hd32", other / "hf", seed=1)
        done = convert(other / "hf", other / "ckpt")
        assert done.returncode == 0, done.stderr[-3000:]
    gen = torch.Generator().manual_seed(3)
    batch = [torch.randint(2, VOCAB, (n,), generator=gen).tolist() for n in (4, 11, 7, 2)]
    out = run_ranks("tests.vllm.bodies:refits", 2,
                    {"ckpts": [str(root / "ckpt"), str(other / "ckpt")], "tp": 2, "prompts": batch,
                     "max_new_tokens": 12, "sampling": {"temperature": 1.0}}, timeout=300, python=vllm_python)
    assert out[0]["samples"] == out[1]["samples"]  # both TP ranks return the same rollouts
    return out[0]


def _gap(a, b) -> float:
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def test_each_refit_reaches_the_engine(refits):
    """policy ← model 0, anchor ← model 1, reference ← model 0, policy ← model 1: each sample's log-probs
    are those of the model the engine was last refitted with, not the other one's."""
    assert [(s["role"], s["model"]) for s in refits["samples"]] == [("policy", 0), ("anchor", 1), ("reference", 0),
                                                                    ("policy", 1)]
    for s in refits["samples"]:
        own, other = s["scored"][s["model"]], s["scored"][1 - s["model"]]
        assert _gap(s["logprobs"], own) < LOGP_TOL, s["role"]
        assert _gap(s["logprobs"], other) > 50 * LOGP_TOL, s["role"]
    assert all(t > 0 for t in refits["refit_s"])  # each refit gathers and reloads: never free


def test_a_role_the_engine_does_not_hold_a_stale_version_and_a_released_engine_are_refused(refits):
    assert "holds the policy weights: refit it with the anchor weights first" in refits["stale_role"]
    assert "policy weights after step 3 is used where the policy weights after step 4 are current" in refits["stale_version"]
    assert "refuses these sampling settings" in refits["bad_temperature"] and "temperature" in refits["bad_temperature"]
    assert "holds no weights: refit it with the policy weights first" in refits["released"]


def _train(vllm_python, out, tp: int, *extra, check: bool = True):
    import subprocess

    from tests.integration.test_resume import _env

    launcher = [vllm_python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp}"]
    done = subprocess.run([*launcher, "-m", "megatron_bond.cli", "train", *ARGS, *extra, f"parallel.tp={tp}",
                           f"run.output_dir={out}"], capture_output=True, text=True, env=_env(), timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def run_args(converted):  # noqa: F811
    root, _, _, _ = converted("gemma2_gqa_hd32")
    # The hd32 models hold 64 positions: prompts of up to 60 tokens leave room for the 4 new ones.
    return [f"policy.ckpt={root / 'ckpt'}", "reward.function=megatron_bond.train.rewards:tiny_reward",
            "rollout.engine=vllm", "data.max_prompt_tokens=60"]


@pytest.fixture(scope="module")
def tp1_run(vllm_python, run_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm-tp1")
    _train(vllm_python, out, 1, *run_args)
    return rows(out)


KEYS = ("rollout/engine_kl", "rollout/engine_kl_k3", "rollout/engine_max_abs_logprob_diff", "time/refit",
        "time/rollout_policy", "time/rollout_anchor", "rollout/tokens_per_s")


@pytest.mark.parametrize("tp", [1, 2])
def test_jbond_runs_with_the_vllm_engine(vllm_python, run_args, tp1_run, tmp_path, tp):
    if tp == 1:
        got = tp1_run
    else:
        _train(vllm_python, tmp_path, tp, *run_args)
        got = rows(tmp_path)
    steps = [r for r in got if not r.get("eval")]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for r in got:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
    for r in steps:
        assert all(k in r for k in KEYS), sorted(set(KEYS) - set(r))
        # The engine's and the trainer's log-probs of the same policy samples, fp32: the rounding gap above.
        assert abs(r["rollout/engine_kl"]) < 1e-3 and r["rollout/engine_max_abs_logprob_diff"] < LOGP_TOL, r
        assert r["time/refit"] > 0
    if tp == 2:  # the requests' seeds do not depend on the layout: TP=2 draws TP=1's rollouts
        assert [r["reward/policy"] for r in steps] == pytest.approx([r["reward/policy"] for r in tp1_run if not r.get("eval")])


def test_kill_9_then_resume_with_the_vllm_engine_is_exact(vllm_python, run_args, tp1_run, tmp_path):
    import subprocess

    from tests.integration.test_resume import _env

    kill_at = random.Random(0).randint(3, 7)
    command = [vllm_python, "-m", "megatron_bond.cli", "train", *ARGS, *run_args, "parallel.tp=1",
               f"run.output_dir={tmp_path}"]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, tmp_path, kill_at)
    kill_all(proc)
    done = _train(vllm_python, tmp_path, 1, *run_args)
    assert "resuming from" in done.stdout
    assert [UNTIMED(r) for r in rows(tmp_path)] == [UNTIMED(r) for r in tp1_run]


def test_generate_benchmark_runs_every_engine_side_by_side(vllm_python):
    """benchmarks/generate.py's smoke: one line per engine and shape, with the keys docs/benchmarks.md reads;
    greedy rows of all three engines equal (the same model through three implementations). Batch 24 × 3
    samples × 60 prompt tokens is more than one vLLM step takes (4,096 tokens, not a multiple of 60): on CPU
    its prefills must be scheduled whole, as a split one makes vLLM's CPU worker fail rewinding the request's
    seeded generator."""
    import subprocess

    from tests.harness import ROOT
    from tests.integration.test_resume import _env

    done = subprocess.run([vllm_python, "benchmarks/generate.py", "--engine", "native,vllm,hf", "--batch", "2,24",
                           "--samples-per-prompt", "1,3", "--prompt-len", "60", "--new-tokens", "6", "--hidden", "256",
                           "--layers", "1", "--vocab", "500", "--repeats", "1", "--json"],
                          cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # stdout holds the JSON lines only
    assert [(r["engine"], r["batch"], r["samples_per_prompt"]) for r in lines] == [
        (e, b, n) for b in (2, 24) for n in (1, 3) for e in ("native", "vllm", "hf")]
    for r in lines:
        assert r["tokens_per_s"] > 0 and r["prefill_s"] > 0
        assert (r["refit_s"] is None) == (r["engine"] == "hf")
        assert r["rows_equal_to_native"] == (1.0 if r["samples_per_prompt"] == 1 else None)
