# k4s: the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
OUT := out
CACHE ?= /var/cache/k4s
export K4S_CACHE := $(CACHE)

PY_SOURCES := $(shell find k4s applets -name '*.py') build/k4s.spec build/k4s_entry.py pyproject.toml

.PHONY: setup components components-lock components-download images k4s image run up down test test-unit bench clean

setup:
	bash build/setup.sh

k4s: $(OUT)/k4s/k4s

$(OUT)/k4s/k4s: $(PY_SOURCES)
	@echo "k4s: freezing with PyInstaller (onedir) -> $(OUT)/k4s"
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --workpath $(OUT)/.pyinstaller --distpath $(OUT) build/k4s.spec
	@touch $@

components:
	$(PYTHON) build/components/build.py

# Airgap images (pause, scratch, busybox) as deterministic OCI tarballs.
images: components
	$(PYTHON) -m k4s oci build --bin $(OUT)/components/bin --busybox /bin/busybox --out $(OUT)/images

# The appliance: initramfs + kernel. Compressed segments are cached by content.
image: setup components images k4s
	$(PYTHON) -m k4s mkimage --out $(OUT)/initramfs.cpio.zst --kernel-out $(OUT)/vmlinuz

# The main job: build everything, boot it in QEMU to a Ready node, Ctrl-C powers off.
run: image
	$(PYTHON) -m k4s vm run

# The same in the background (returns once Ready); `make down` powers it off cleanly.
up: image
	$(PYTHON) -m k4s vm up

down:
	$(PYTHON) -m k4s vm down

# Re-record the lock's sha256s after a deliberate version or toolchain change.
# For users with internet: the official release binaries, sha256-checked, instead of a source build.
components-download:
	$(PYTHON) build/components/fetch.py --out $(OUT)/components/bin

components-lock:
	$(PYTHON) build/components/build.py --update-lock

# The README's test command: installs, builds, then runs every tier.
test: image
	$(PYTHON) -m pytest -v -ra tests

test-unit:
	$(PYTHON) -m pytest -q tests/unit

bench: image
	$(PYTHON) bench/run.py

clean:
	rm -rf $(OUT)
