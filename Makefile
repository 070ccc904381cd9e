# Two commands a newcomer types: `make demo` and `make test`.
# Each creates .venv when missing, torch first. On Linux, PyPI's torch is the CUDA build:
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU wheel from PyTorch's
# index instead. Unset, pip's own configuration decides (a local wheel in find-links, say).
PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
NIIVUE := tumorfm/viewer/static/niivue.umd.js

.PHONY: demo test lint bench-env bench clean

$(VENV)/.done: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The viewer's one script, NiiVue, pinned and hash-checked: fetched once from the npm registry
$(NIIVUE): tumorfm/viewer/assets.py | $(VENV)/.done
	$(PY) -m tumorfm.viewer.assets

# the demo goes on without NiiVue (no npm): its report then links no viewer pages
demo: $(VENV)/.done
	@test -f $(NIIVUE) || $(PY) -m tumorfm.viewer.assets || echo "tumorfm: note: no viewer pages"
	$(VENV)/bin/tumorfm demo

# the slowest tests are listed at the end, to keep the suite's time in view
test: $(VENV)/.done $(NIIVUE)
	$(PY) -m pytest -q -n 2 --durations=20 tests

lint: $(VENV)/.done
	$(VENV)/bin/ruff check tumorfm tests benchmarks

# The peer (nnU-Net v2) lives in its own environment: it needs torchvision, which does not
# import beside the CPU torch 2.13.0 wheel.
bench-env:
	bash benchmarks/setup_env.sh

# Every benchmark, one after the other (hours on 2 cores), then the README's results section.
bench: $(VENV)/.done bench-env
	.venv-bench/bin/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
