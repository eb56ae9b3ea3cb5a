# `make demo` and `make test` each set up .venv (and the Debian packages the tests need) by themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEBS := espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo bench-attention test test-fast lint format debs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,accelerators]'
	touch $(STAMP)

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

demo: $(STAMP)
	$(VENV)/bin/polyformer train experiments/configs/gpt_stdlib_demo.py

bench-attention: $(STAMP)
	$(PY) -m benchmarks.attention --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) debs lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -x -q -m "not heavy"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
