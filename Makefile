# Ficus: the two commands of the quick start are `make demo` and `make test`.
# Both create .venv and install what is missing (Debian packages included) first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ficus-installed

.PHONY: setup demo test lint typecheck bench clean services

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/ficus demo

services: setup
	bash scripts/services.sh

test: setup services
	bash scripts/test.sh $(VENV)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict

typecheck: lint

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .ficus .pytest_cache .mypy_cache .ruff_cache
