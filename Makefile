# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline by design: albumentations phones home at import, huggingface_hub looks for hub weights.
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

DEMO_DIR ?= demo_out

.PHONY: venv test demo bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cellcls demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# Short runs of every benchmark (minutes); `make bench` is the full run. Both rewrite benchmarks/README.md's
# generated section and benchmarks/plots/.
bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
