"""checkpoint.export_hf: the policy as a Hugging Face directory beside each checkpoint, at TP=2 and PP=2;
the final export loads in transformers and scores like `megatron-bond score` on the run's RUN_DIR/policy;
keep-last and keep-best; a kill during an export leaves the previous one intact, and the resume makes it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.harness import ROOT, run_ranks
from tests.integration.hf_models import hf_token_logprobs
from tests.integration.test_gemma_parity import TOL
from tests.integration.test_refusals import QUICK

pytestmark = pytest.mark.distributed

EXPORT = ["checkpoint.export_hf=true", "train.steps=4", "checkpoint.every=2", "train.eval_every=2",
          "checkpoint.keep_last=1", "checkpoint.keep_best=quantile/ref", "reward.function=megatron_bond.train.rewards:tiny_reward"]


def _train(out, ckpt, layout, *extra, env=None):
    tp, pp = layout
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={tp * pp}",
               "-m", "megatron_bond.cli", "train", str(ROOT / "recipes" / "demo.yaml"), *QUICK, *EXPORT,
               f"parallel.tp={tp}", f"parallel.pp={pp}", f"policy.ckpt={ckpt}", f"run.output_dir={out}", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                               **(env or {})})


def _evals(out):
    return {r["step"]: r["quantile/ref"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("eval")}


@pytest.fixture(scope="module")
def runs(converted, tmp_path_factory):
    root, _, _, _ = converted("gemma2_gqa")
    out = {}
    for layout in [(2, 1), (1, 2)]:
        d = tmp_path_factory.mktemp(f"export_tp{layout[0]}pp{layout[1]}")
        done = _train(d / "run", root / "ckpt", layout)
        assert done.returncode == 0, done.stderr[-3000:]
        out[layout] = d / "run"
    return out


@pytest.mark.parametrize("layout", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_keep_last_and_keep_best(runs, layout):
    out = runs[layout]
    evals = _evals(out)
    exported = {2, 4}  # the checkpoint steps; keep_last=1 keeps step 4, keep_best the best of the two
    best = max(sorted(exported), key=lambda s: evals[s])
    assert sorted(p.name for p in (out / "hf").iterdir()) == sorted({"best", "step-4", f"step-{best}"})
    assert (out / "hf" / "best").read_text().split() == [f"step-{best}", str(evals[best])]


@pytest.mark.parametrize("layout", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_the_final_export_loads_in_transformers_and_scores_like_the_final_policy(runs, layout, tmp_path):
    import transformers

    out = runs[layout]
    export = out / "hf" / "step-4"
    assert {"model.safetensors", "config.json", "generation_config.json"} <= {p.name for p in export.iterdir()}
    model = transformers.AutoModelForCausalLM.from_pretrained(export, attn_implementation="eager").eval()
    assert model.dtype == torch.float32  # the model dtype of a CPU run
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 251, (n,), generator=gen).tolist() for n in (5, 17, 30)]
    scored = run_ranks("tests.integration.bodies:score_checkpoint", 2,
                       {"ckpt": str(out / "policy"), "tp": 2, "pp": 1, "rows": rows, "out": str(tmp_path / "s.jsonl")})[0]
    for row, got in zip(rows, scored):
        err = (torch.tensor(got["logprobs"]) - hf_token_logprobs(model, row)).abs().max().item()
        assert err < TOL, err


def test_a_kill_during_an_export_keeps_the_previous_and_the_resume_makes_it(converted, tmp_path):
    root, _, _, _ = converted("gemma2_gqa")
    out = tmp_path / "run"
    killed = _train(out, root / "ckpt", (2, 1), env={"MEGATRON_BOND_FAULT": "4:export_started"})
    assert killed.returncode != 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert not (out / "hf" / "step-4").exists()
    before = (out / "hf" / "step-2" / "model.safetensors").read_bytes()
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(out / "hf" / "step-2")  # complete and loadable
    done = _train(out, root / "ckpt", (2, 1))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "hf" / "step-4" / "model.safetensors").is_file()
    assert not [p.name for p in (out / "hf").iterdir() if p.name.startswith(".")]  # staged copies cleaned
    if (out / "hf" / "step-2").exists():  # kept as the best
        assert (out / "hf" / "step-2" / "model.safetensors").read_bytes() == before


def test_a_training_checkpoint_exports_like_the_runs_own_export(runs, tmp_path):
    """tools/convert_megatron_to_hf.py takes RUN_DIR/checkpoints/step_N (it took only converted checkpoints
    and policy/): the same tensors as the run's export of that step, files readable as other outputs (not 0600)."""
    from safetensors.torch import load_file

    from tests.integration.conftest import export

    out = runs[(2, 1)]
    done = export(out / "checkpoints" / "step_0000004", tmp_path / "hf")
    assert done.returncode == 0, done.stderr[-3000:]
    got, want = load_file(tmp_path / "hf" / "model.safetensors"), load_file(out / "hf" / "step-4" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "hf" / "config.json").is_file()
