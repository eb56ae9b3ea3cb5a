# `make demo` and `make test` each set up .venv (and the Debian packages the tests need) by themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEBS := espeak-ng libtcmalloc-minimal4
# The suite's processes allocate with tcmalloc: XLA's compiles, most of the suite's time, allocate
# heavily and are faster with it than with glibc's malloc (benchmarks/RESULTS.md). Looked up after
# `debs` has installed it; where it is not found, the processes keep the system's malloc. A
# LD_PRELOAD from the environment is kept after it.
TCMALLOC = $(shell /sbin/ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 /{print $$NF; exit}')
PYTEST = LD_PRELOAD="$(strip $(TCMALLOC) $(LD_PRELOAD))" $(PY) -m pytest
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo bench-attention test test-fast lint format debs clean

# pip byte-compiles what it installs one file at a time; compileall does the same work on every
# core (benchmarks/RESULTS.md). As pip does, it leaves a file that this Python cannot compile as
# source (torch ships one in Python 3.12's syntax).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[test,accelerators]'
	$(PY) -m compileall -qq -j 0 $(VENV)/lib || true
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
	$(PYTEST) -q -n auto --maxprocesses 4 --dist loadfile

test-fast: $(STAMP) debs
	$(PYTEST) -x -q -m "not heavy"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
