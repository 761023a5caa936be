# k4s: the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
OUT := out
CACHE ?= /var/cache/k4s
export K4S_CACHE := $(CACHE)

PY_SOURCES := $(shell find k4s applets -name '*.py') build/k4s.spec build/k4s_entry.py pyproject.toml

.PHONY: setup components components-lock images k4s test test-unit bench clean

setup:
	bash build/setup.sh

k4s: $(OUT)/k4s/k4s

$(OUT)/k4s/k4s: $(PY_SOURCES)
	@echo "k4s: freezing with PyInstaller (onedir) -> $(OUT)/k4s"
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --workpath $(OUT)/.pyinstaller --distpath $(OUT) build/k4s.spec
	@touch $@

components:
	$(PYTHON) build/components/build.py

# Airgap images (pause, coredns, busybox) as deterministic OCI tarballs.
images: components
	$(PYTHON) -m k4s oci build --bin $(OUT)/components/bin --busybox /bin/busybox --out $(OUT)/images

# Re-record the lock's sha256s after a deliberate version or toolchain change.
components-lock:
	$(PYTHON) build/components/build.py --update-lock

# The README's test command: installs, builds, then runs every tier.
test: setup components images k4s
	$(PYTHON) -m pytest -v -ra tests

test-unit:
	$(PYTHON) -m pytest -q tests/unit

bench: k4s
	$(PYTHON) bench/run.py

clean:
	rm -rf $(OUT)
