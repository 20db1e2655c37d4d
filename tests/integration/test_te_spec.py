"""On a GPU with Transformer Engine: a converted Gemma 2 scores like transformers with the TE layer spec
(model.transformer_impl=transformer_engine), loading the same checkpoint the local spec loads."""

import json
import shutil

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_te_spec_scores_like_transformers(converted, tmp_path):
    pytest.importorskip("transformer_engine", reason="Transformer Engine is not installed")
    from tests.harness import run_ranks

    root, _, rows, ref = converted("gemma2_gqa")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    meta = json.loads((ckpt / "megatron_bond.json").read_text())
    meta["model"]["transformer_impl"] = "transformer_engine"
    (ckpt / "megatron_bond.json").write_text(json.dumps(meta))
    got = run_ranks("tests.integration.bodies:score_many", 1, {"ckpts": [str(ckpt)], "tp": 1, "pp": 1, "rows": rows},
                    timeout=300)[0][0]
    err = max((torch.tensor(g) - r).abs().max().item() for g, r in zip(got, ref))
    assert err < 1e-3, err  # TE's fused kernels accumulate differently from transformers' eager path
