# `make test` is the one test command: README and .ci/run both call it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test setup demo tiny simulate clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/ci.txt -e '.[test]'
	touch $(STAMP)

# pytest exits 5 when it collected nothing; that must fail, and it does (any non-zero exit fails make).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

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
	rm -rf $(VENV) build *.egg-info
