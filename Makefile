# Two commands do all the set-up: `make book` and `make test` (each creates the venv and installs if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: install book pdf replicate elicit test test-fast check-params bench clean

install: $(VENV)/.installed

# CPU torch 2.13.0 is pinned in pyproject.toml; the `gpu` extra (DeepSpeed, vLLM) is for GPU machines only.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed (pyproject.toml requires-python); set PYTHON=python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# The book of the run lands in runs/<name>/book/_build/html/index.html (the last line printed says where).
book: install
	$(PY) -m rlvr_utils run --params $(PARAMS)

# The built book as one PDF, runs/<name>/book/_build/pdf/book.pdf (after `make book`), printed offline by the
# machine's Chromium (Debian: apt-get install chromium; or RLVR_CHROMIUM=/path/to/chrome).
pdf: install
	$(PY) -m rlvr_utils pdf --params $(PARAMS)

# The study again under verdict.replicate_seeds (runs <name>-seed<k>), then the verdict chapter and the book.
replicate: install
	$(PY) -m rlvr_utils replicate --params $(PARAMS)

# RLVR's gain vs how much of the new wording pretraining saw (runs <name>-elicit-f<share>-s<seed>), then the book.
elicit: install
	$(PY) -m rlvr_utils elicit --params $(PARAMS)
	$(PY) -m rlvr_utils run --params $(PARAMS)

# Everything, the whole book on params/ci.yaml included (about 30 minutes on 2 cores, install excluded).
test: install
	$(PY) -m pytest -q

# While working: unit tests and planted checks on tiny models, no end-to-end run (about 3 minutes on 2 cores).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Every shipped params file; the rehearsal's local base model is built first when missing (about 1 minute).
check-params: install runs/rehearsal-base/config.json
	$(PY) -m rlvr_utils check-params --other-machine params/*.yaml  # real-scale files are for GPU machines

runs/rehearsal-base/config.json: | install
	$(PY) -m rlvr_utils.training.rehearsal --out runs/rehearsal-base

bench: install
	$(PY) benchmarks/bench_extract_cka.py

clean:
	rm -rf _build book/executed runs/*/book  # each run's book; its notebooks re-run next time (stages skip)
