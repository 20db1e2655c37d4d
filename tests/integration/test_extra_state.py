"""Checkpoints load whatever modules carry extra state (Transformer Engine's FP8 metadata): models/keys.py
drops ``_extra_state`` on every save and load and gives each module its own (issue 35, point 1)."""

import torch

from tests.harness import run_ranks


def test_extra_state_modules_load_and_write_spec_free_checkpoints(converted, tmp_path):
    root, _, rows, ref = converted("gemma2_gqa")
    (got,) = run_ranks("tests.integration.bodies:extra_state_checkpoints", 1,
                       {"ckpt": str(root / "ckpt"), "out": str(tmp_path / "resaved"), "rows": rows}, timeout=300)
    assert got["asked"], "the stub must make the model ask for extra state, as TE's modules do"
    assert got["given"] and all(g == {"amax_history": [0.0]} for g in got["given"])  # its own, as built
    assert got["saved_extra"] == []
    # The same weights through the same local code path: bit-identical scores; and the HF reference within
    # the conversion parity bound of test_gemma_parity (1e-4 on fp32 log-probs of O(10)).
    assert got["scores_extra"] == got["scores_plain"]
    for g, r in zip(got["scores_extra"], ref):
        assert (torch.tensor(g) - r).abs().max().item() < 1e-4
