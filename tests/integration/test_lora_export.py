"""A LoRA J-BOND run on a converted Gemma 2 checkpoint (one rank: test_lora.py covers the layouts): its
Hugging Face export (adapters merged) and the PEFT adapter directory of tools/convert_megatron_to_hf.py
--peft-dir, loaded by peft onto the HF base, both score like `megatron-bond score` on the run's policy
(within test_gemma_parity's 1e-4).
The learning rate is high enough for the adapters to move the log-probs far beyond that bound, so an
export that dropped them would fail."""

import json

import pytest
import torch

from tests.harness import run_ranks
from tests.integration.conftest import export
from tests.integration.hf_models import hf_token_logprobs
from tests.integration.test_gemma_parity import TOL
from tests.integration.test_hf_export import _train

pytestmark = pytest.mark.distributed

LORA = ["model.lora.rank=4", "model.lora.alpha=8", "optimizer.lr=1e-2", "optimizer.warmup_steps=0",
        "checkpoint.every=2", "train.eval_every=0", "checkpoint.keep_best=null"]


@pytest.fixture(scope="module")
def run(converted, tmp_path_factory):
    root, base, _, _ = converted("gemma2_gqa")
    out = tmp_path_factory.mktemp("lora") / "run"
    done = _train(out, root / "ckpt", (1, 1), *LORA, "train.steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(1, 251, (n,), generator=gen).tolist() for n in (5, 17, 30)]
    scored = run_ranks("tests.integration.bodies:score_checkpoint", 1,
                       {"ckpt": str(out / "policy"), "tp": 1, "pp": 1, "rows": rows, "out": str(out.parent / "s.jsonl")})[0]
    return out, root, base, rows, [torch.tensor(s["logprobs"]) for s in scored]


def test_adapters_moved_the_policy(run):
    out, _, base, rows, scored = run
    assert max((s - hf_token_logprobs(base, r)).abs().max().item() for r, s in zip(rows, scored)) > 100 * TOL
    saved = json.loads((out / "checkpoints" / "step_0000002" / "config.json").read_text())
    assert saved["model"]["lora"]["rank"] == 4


def test_merged_export_scores_like_the_policy(run):
    import transformers

    out, _, _, rows, scored = run
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf" / "step-2", attn_implementation="eager").eval()
    for row, got in zip(rows, scored):
        assert (got - hf_token_logprobs(model, row)).abs().max().item() < TOL


def test_peft_directory_on_the_base_scores_like_the_policy(run, tmp_path):
    import peft
    import transformers

    out, root, _, rows, scored = run
    done = export(out / "policy", tmp_path / "merged", "--peft-dir", tmp_path / "peft")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in (tmp_path / "peft").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    base = transformers.AutoModelForCausalLM.from_pretrained(root / "hf", attn_implementation="eager")  # peft edits it
    model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    for row, got in zip(rows, scored):
        assert (got - hf_token_logprobs(model, row)).abs().max().item() < TOL


def test_peft_dir_needs_adapters(converted, tmp_path):
    root, _, _, _ = converted("gemma2_gqa")
    done = export(root / "ckpt", tmp_path / "hf", "--peft-dir", tmp_path / "peft")
    assert done.returncode == 2 and "holds no adapters" in done.stderr
    assert not (tmp_path / "hf").exists() and not (tmp_path / "peft").exists()
