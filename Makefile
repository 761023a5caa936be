# k4s: the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
OUT := out
CACHE ?= /var/cache/k4s
export K4S_CACHE := $(CACHE)

PY_SOURCES := $(shell find k4s applets -name '*.py') k4s/mkimage/stage0.sh build/k4s.spec build/k4s_entry.py pyproject.toml

.PHONY: setup components components-lock components-download images k4s image stage1 netboot run up down test test-unit test-repro bench clean

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
	$(PYTHON) -m k4s mkimage --out $(OUT)/initramfs.cpio.zst --kernel-out $(OUT)/vmlinuz --report $(OUT)/image-report.json

# The first stage (LinuxBoot / PXE): a lean frozen k4s that fetches, verifies and kexecs stage 2,
# trusting out/keys/signing.pub (made once by `k4s keygen`; the private key never leaves out/keys).
# Its UKI (out/stage1.efi) boots under UEFI Secure Boot with the db key of out/keys, from
# an ESP or a NIC; the signed command line names the payload (the QEMU host's `make netboot`).
STAGE1_SOURCES := $(PY_SOURCES) build/stage1.spec build/stage1_entry.py
PAYLOAD_URL ?= http://10.0.2.2:8080/
UKI_CMDLINE ?= console=ttyS0 quiet panic=-1 k4s.events=ttyS1 k4s.payload=$(PAYLOAD_URL)
out/keys/db.crt:
	$(PYTHON) -m k4s keygen --dir out/keys
out/keys/signing.key: out/keys/db.crt

$(OUT)/stage1/k4s/k4s: $(STAGE1_SOURCES)
	@echo "k4s: freezing stage 1 with PyInstaller (onedir) -> $(OUT)/stage1"
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --workpath $(OUT)/.pyinstaller-stage1 --distpath $(OUT)/stage1 build/stage1.spec
	@touch $@

stage1: setup out/keys/signing.key $(OUT)/stage1/k4s/k4s
	$(PYTHON) -m k4s mkimage --stage1 out/keys/signing.pub --bundle $(OUT)/stage1/k4s --out $(OUT)/stage1.cpio.xz \
		$(if $(PAYLOAD_CA),--payload-ca $(PAYLOAD_CA))
	$(PYTHON) -m k4s uki --kernel $(firstword $(wildcard $(CACHE)/kernel/boot/vmlinuz-*)) --initrd $(OUT)/stage1.cpio.xz --cmdline "$(UKI_CMDLINE)" --out $(OUT)/stage1.efi \
		--vars $(OUT)/uefi-vars.fd

# Serve the signed stage 2 over HTTP for PXE (boot.ipxe) and for stage 1 (k4s.payload=http://HOST:8080/).
netboot: image stage1
	$(PYTHON) -m k4s netboot prepare --out $(OUT)/netboot
	$(PYTHON) -m k4s netboot serve --dir $(OUT)/netboot --address 0.0.0.0 --port 8080

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
# One test process: the VMs use both cores (three at once, measured, time out their bootstrap).
test: image stage1
	$(PYTHON) -m pytest -v -ra --durations=10 -m "not repro" tests

# A cold rebuild of the whole image gives the same sha256 (minutes of zstd -19 and mksquashfs).
test-repro: image
	$(PYTHON) -m pytest -v -m repro tests

test-unit:
	$(PYTHON) -m pytest -q tests/unit

bench: image stage1
	$(PYTHON) -m bench

clean:
	rm -rf $(OUT)
