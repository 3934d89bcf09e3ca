# The two commands of README.md: `make demo` runs the example end to end, `make test` runs
# the checks and the test suite (CI runs exactly `make test`, through .ci/run); `make bench`
# runs the benchmark. Each sets up .venv first: a virtualenv with the project installed in
# editable mode, redone when pyproject.toml changes; and promtool and stunnel if missing (system-tools).
# `make feast-setup` makes .venv-feast, the Feast side of the fraud example (deploy/feast).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FEAST_VENV ?= .venv-feast
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench setup feast-setup system-tools clean

demo: $(INSTALLED)
	$(BIN)/worker demo $(DEMO_ARGS)

# pytest exits with 5 when it collects no tests; that is not a failure of the suite.
test: $(INSTALLED) $(FEAST_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

bench: $(INSTALLED)
	$(BIN)/python -m bench $(BENCH_ARGS)

setup: $(INSTALLED)

feast-setup: $(FEAST_VENV)/.installed

# system-tools is order-only: checked on every way through $(INSTALLED), without redoing the venv.
$(INSTALLED): pyproject.toml | system-tools
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,dev,bench]'
	touch $@

# Feast pins older prometheus_client, redis and pandas than the worker, so it gets a virtualenv of its
# own (deploy/feast/requirements.txt says what is in it), redone when that file changes.
$(FEAST_VENV)/.installed: deploy/feast/requirements.txt
	test -x $(FEAST_VENV)/bin/python || $(PYTHON) -m venv $(FEAST_VENV)
	$(FEAST_VENV)/bin/python -m pip install --disable-pip-version-check -r deploy/feast/requirements.txt
	touch $@

# Debian packages the tests need, installed when their command is missing: promtool (package prometheus;
# tests/unit/test_alert_rules.py checks and unit-tests deploy/prometheus-alerts.yml with it) and stunnel4
# (tests/integration/test_security.py puts TLS in front of the local broker, which cannot speak it). Only
# the tools are wanted: a policy-rc.d that refuses every start (if the machine has none) keeps the packages
# from starting their servers, and under systemd prometheus' unit is disabled and stopped. Without apt-get,
# put promtool (a Prometheus release's) and stunnel on PATH by hand.
SYSTEM_TOOLS := promtool:prometheus stunnel4:stunnel4
system-tools:
	@missing=$$(for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || echo $${pair#*:}; done); \
	[ -z "$$missing" ] && exit 0; \
	if ! command -v apt-get >/dev/null; then \
		echo "not found and no apt-get to install them: $$missing (put them on PATH by hand)" >&2; exit 0; \
	fi; \
	set -ex; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
		printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
		$(SUDO) chmod 755 /usr/sbin/policy-rc.d; \
	fi; \
	$(SUDO) apt-get update; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	if [ -d /run/systemd/system ] && echo "$$missing" | grep -qw prometheus; then \
		$(SUDO) systemctl disable --now prometheus; fi

clean:
	rm -rf $(VENV) $(FEAST_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
