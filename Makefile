# hostwatch: every set-up step lives here, so a fresh Debian 12 machine needs only `make run` or
# `make test` (as root, or with sudo for the apt step). All targets are idempotent.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

# Debian packages: building systemd-python (gcc, pkg-config, libsystemd-dev), the venv, and the
# real parts the tests use (journald, ip/netns, nftables, prometheus with promtool,
# prometheus-alertmanager with amtool, dnsmasq).
RUN_DEBS := python3-venv python3-dev gcc pkg-config libsystemd-dev
# Building the .deb (`make deb`; the systemd tests install it into a private systemd).
DEB_DEBS := $(RUN_DEBS) dh-virtualenv debhelper dpkg-dev build-essential util-linux
TEST_DEBS := $(RUN_DEBS) systemd iproute2 nftables prometheus prometheus-alertmanager procps \
	iputils-ping dnsmasq-base \
	chromium fonts-dejavu-core $(DEB_DEBS)

# The peers `make bench` measures hostwatch against (never needed by `make test`).
BENCH_DEBS := $(RUN_DEBS) iproute2 util-linux iputils-ping fping prometheus \
	prometheus-smokeping-prober prometheus-blackbox-exporter
BENCH_ARGS ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck unit check bench deps-run deps-test deps-deb deps-bench deb clean

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps-run:
	$(call apt_install,$(RUN_DEBS))

deps-test:
	$(call apt_install,$(TEST_DEBS))

deps-deb:
	$(call apt_install,$(DEB_DEBS))

deps-bench:
	$(call apt_install,$(BENCH_DEBS))

# The Debian package (dh-virtualenv; see packaging/build-deb and docs/operations.md). Rebuilt
# only when a file that goes into it changed.
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' packaging/debian/changelog)
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_FILE := build/deb/hostwatch_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_INPUTS := pyproject.toml README.md CHANGELOG.md $(shell find src/hostwatch docs packaging \
	-type f -not -name '*.pyc' 2>/dev/null)

deb: deps-deb $(DEB_FILE)

$(DEB_FILE): $(DEB_INPUTS)
	packaging/build-deb build/deb

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.stamp-run

run: deps-run $(VENV)/.stamp-run
	$(BIN)/hostwatch $(ARGS)

lint: deps-test $(VENV)/.stamp-test
	$(BIN)/ruff check src tests bench

typecheck: deps-test $(VENV)/.stamp-test
	$(BIN)/mypy

unit: deps-test $(VENV)/.stamp-test
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# hostwatch beside fping, smokeping_prober and blackbox_exporter at 10,000 loopback targets, in
# a network namespace of its own; ~15 minutes, bounded. BENCH_ARGS='--help' lists the knobs.
bench: deps-bench $(VENV)/.stamp-run
	$(SUDO) $(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
