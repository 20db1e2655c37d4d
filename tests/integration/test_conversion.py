"""Round trips and refusals of tools/convert_hf_to_megatron.py and tools/convert_megatron_to_hf.py."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.harness import run_ranks
from tests.integration.conftest import convert, export
from megatron_bond.config import ConfigError
from megatron_bond.convert.convert import hf_to_megatron, megatron_to_hf
from tests.integration.hf_models import build_hf_model


def assert_same_weights(a_dir, b_dir):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("variant", ["gemma_mqa", "gemma2_gqa", "gemma3_gqa", "gemma2_reward"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(converted, tmp_path, variant):
    import transformers

    root, model, _, _ = converted(variant)
    done = export(root / "ckpt", tmp_path / "back")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(root / "hf", tmp_path / "back")
    loaded = getattr(transformers, type(model).__name__).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    tokens = torch.tensor([[5, 9, 200, 3, 77]])
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


@pytest.mark.parametrize("variant, exported", [("gemma3_multimodal", "Gemma3ForCausalLM"),
                                               ("gemma3_multimodal_reward", "Gemma3TextForSequenceClassification")])
def test_multimodal_gemma3_exports_as_its_text_model(converted, tmp_path, variant, exported):
    """The language model of a Gemma3ForConditionalGeneration (or the reward model of a
    Gemma3ForSequenceClassification) converts alone (the vision tower is left out) and exports as a
    text-only Gemma 3: the same tensors bit for bit, under the text model's names, and transformers'
    text model gives the multimodal model's logits."""
    import transformers

    root, model, _, _ = converted(variant)
    done = export(root / "ckpt", tmp_path / "back")
    assert done.returncode == 0, done.stderr[-2000:]
    source, back = load_file(root / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    language = {"model." + k[len("language_model.model."):]: v for k, v in source.items() if k.startswith("language_model.model.")}
    language.update({k: v for k, v in source.items() if k.startswith("score.")})
    assert language.keys() == back.keys() and all(torch.equal(language[k], back[k]) for k in back)
    loaded = getattr(transformers, exported).from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    tokens = torch.tensor([[5, 9, 200, 3, 77]])
    with torch.no_grad():
        # The same weights bit for bit, through transformers' own code on both sides; only the multimodal
        # wrapper (embedding merge, mask construction) may reorder a few fp32 operations on the O(10)
        # logits, each a rounding of u·10 ≈ 6e-7: 1e-5 allows about 16 of them, a wrong tensor moves O(1).
        torch.testing.assert_close(loaded(tokens).logits, model(input_ids=tokens).logits, rtol=0, atol=1e-5)


@pytest.mark.distributed
def test_tp2_training_layout_checkpoint_exports(converted, tmp_path):
    root, _, _, _ = converted("gemma3_gqa")
    run_ranks("tests.integration.bodies:resave_at_layout", 2,
              {"ckpt": str(root / "ckpt"), "tp": 2, "pp": 1, "out": str(tmp_path / "tp2")})
    saved = json.loads((tmp_path / "tp2" / "megatron_bond.json").read_text())
    assert saved["parallel"]["tp"] == 2
    done = export(tmp_path / "tp2", tmp_path / "back")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(root / "hf", tmp_path / "back")


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_refusals_leave_nothing(tmp_path):
    """What the converters refuse before any work (the one-line CLI form of such errors is covered by
    test_refusals.py), and that nothing partial remains; then an --overwrite that succeeds."""
    build_hf_model("gemma_mqa", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "empty").mkdir()
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))
    (tmp_path / "wrong" / "model.safetensors").symlink_to(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "exists").mkdir()
    cases = [("empty", "o1", "no config.json"), ("llama", "o2", "model_type 'llama' is not supported"),
             ("noweights", "o3", "no model.safetensors"), ("wrong", "o4", "does not match the weights"),
             ("hf", "exists", "already exists: pass --overwrite")]
    for src, dst, message in cases:
        with pytest.raises(ConfigError, match=message):
            hf_to_megatron(tmp_path / src, tmp_path / dst)
        assert not (tmp_path / dst).exists() or dst == "exists"
        assert _leftovers(tmp_path) == []
    assert list((tmp_path / "exists").iterdir()) == []
    assert convert(tmp_path / "hf", tmp_path / "exists", "--overwrite").returncode == 0
    with pytest.raises(ConfigError, match="not a megatron-bond checkpoint"):
        megatron_to_hf(tmp_path / "hf", tmp_path / "o5")


def _digest(tree) -> dict[str, str]:
    return {str(f.relative_to(tree)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(tree.rglob("*")) if f.is_file()}


def test_output_overlapping_the_input_is_refused_and_the_input_survives(converted, tmp_path):
    """--overwrite must never delete what the command reads: the output may not be the input, lie
    inside it, or contain it. The reported case (same directory, --overwrite) goes through each CLI;
    the other two are checked in-process, before any work."""
    hf = tmp_path / "parent" / "hf"
    build_hf_model("gemma2_gqa", hf)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(converted("gemma_mqa")[0] / "ckpt", ckpt)
    before = {hf: _digest(hf), ckpt: _digest(ckpt)}
    for tool, src in ((convert, hf), (export, ckpt)):
        done = tool(src, src, "--overwrite")
        assert done.returncode == 2, done.stderr[-2000:]
        assert len(done.stderr.strip().splitlines()) == 1 and "overlaps the input" in done.stderr
    for fn, src in ((hf_to_megatron, hf), (megatron_to_hf, ckpt)):
        for out in (src / "out", src.parent):
            with pytest.raises(ConfigError, match="overlaps the input"):
                fn(src, out, overwrite=True)
    assert {hf: _digest(hf), ckpt: _digest(ckpt)} == before
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "parent") == []
