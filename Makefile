# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install demo test bench clean space-check

install: $(STAMP)

# Re-install only when the dependencies change; the project itself is installed editable.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/genlab demo --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

# Every speed ratio (samplers vs diffusers' loops at 1 and 2 threads, LDM vs DDPM, VAE, Inception,
# fraction of peak) with the machine and its load; writes benchmarks/results/latest.{json,md}. A few
# minutes on an idle 2-core machine; run it when nothing else is.
bench: install
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

# Simulate the Hugging Face Spaces build on a clean clone: an empty folder holding only
# requirements.txt, installed into a fresh venv (pip's cache makes reruns faster; PyTorch is large),
# then the repository copied in and app.py started as Spaces starts it, and called.
SPACE_DIR ?= build/space-check
space-check:
	rm -rf $(SPACE_DIR) && mkdir -p $(SPACE_DIR)/repo
	cp requirements.txt $(SPACE_DIR)/repo/
	$(PYTHON) -m venv $(SPACE_DIR)/venv
	cd $(SPACE_DIR)/repo && ../venv/bin/python -m pip install --quiet -r requirements.txt
	git ls-files -z | xargs -0 -I{} cp --parents {} $(SPACE_DIR)/repo/
	$(SPACE_DIR)/venv/bin/python tests/space_check.py $(SPACE_DIR)/repo --python $(SPACE_DIR)/venv/bin/python

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
