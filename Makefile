# The two commands of README.md: `make demo` runs the example end to end, `make test` runs
# the checks and the test suite (CI runs exactly `make test`, through .ci/run); `make bench`
# runs the benchmark. Each sets up .venv first: a virtualenv with the project installed in
# editable mode, redone when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench setup clean

demo: $(INSTALLED)
	$(BIN)/worker demo $(DEMO_ARGS)

# pytest exits with 5 when it collects no tests; that is not a failure of the suite.
test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

bench: $(INSTALLED)
	$(BIN)/python -m bench $(BENCH_ARGS)

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,dev,bench]'
	touch $@

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
