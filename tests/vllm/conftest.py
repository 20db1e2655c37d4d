"""The vLLM engine's tests run their ranks under .venv-vllm's interpreter (`make setup-vllm`: vLLM pins
another transformers than the project's, so it lives in a second venv that holds the project too); the
references (transformers, the native engine) come from this one. `make test` installs it first, so these
tests never skip: without it they fail, naming the command."""

import pytest

from tests.harness import ROOT

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="session")
def vllm_python() -> str:
    if not (ROOT / ".venv-vllm" / ".installed").exists():
        pytest.fail(f"{VLLM_PYTHON.parent.parent} is not installed: `make setup-vllm` (make test runs it)")
    return str(VLLM_PYTHON)
