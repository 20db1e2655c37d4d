"""The vLLM engine's tests run their ranks under .venv-vllm's interpreter (`make setup-vllm`: vLLM pins
another transformers than the project's, so it lives in a second venv that holds the project too); the
references (transformers, the native engine) come from this one. The engine is an optional extra, so
`make test` does not install it: where it is missing these tests skip, except under .ci/run, which
installs it and sets MEGATRON_BOND_REQUIRE_VLLM=1 so that a missing venv fails instead."""

import os

import pytest

from tests.harness import ROOT

VLLM_VENV = ROOT / ".venv-vllm"


@pytest.fixture(scope="session")
def vllm_python() -> str:
    if not (VLLM_VENV / ".installed").exists():
        if os.environ.get("MEGATRON_BOND_REQUIRE_VLLM") == "1":
            pytest.fail(f"{VLLM_VENV} is not installed: .ci/run runs `make setup-vllm` before `make test`")
        pytest.skip("the optional vLLM engine is not installed here (make setup-vllm)")
    return str(VLLM_VENV / "bin" / "python")
