import functools
import subprocess
import sys

import pytest
import torch

from tests.harness import ROOT
from tests.integration.hf_models import VOCAB, build_hf_model, hf_token_logprobs


def _tool(script, *args):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, f"tools/{script}", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env)


def convert(hf_dir, out_dir, *extra):
    return _tool("convert_hf_to_megatron.py", "--hf-dir", hf_dir, "--out-dir", out_dir, *extra)


def export(ckpt, out_dir, *extra):
    return _tool("convert_megatron_to_hf.py", "--ckpt-dir", ckpt, "--out-dir", out_dir, *extra)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """variant -> (dir with hf/ and ckpt/, the HF model, scored rows, HF reference per row)."""
    @functools.cache  # each variant built and converted once per session
    def get(variant):
        root = tmp_path_factory.mktemp(variant)
        model = build_hf_model(variant, root / "hf")
        done = convert(root / "hf", root / "ckpt")
        assert done.returncode == 0, done.stderr[-3000:]
        gen = torch.Generator().manual_seed(0)
        rows = [torch.randint(1, VOCAB, (n,), generator=gen).tolist() for n in (5, 17, 30, 2)]
        if "reward" in variant:
            with torch.no_grad():
                ref = [model(torch.tensor([r])).logits[0, 0].item() for r in rows]
        else:
            ref = [hf_token_logprobs(model, r) for r in rows]
        return root, model, rows, ref

    return get
