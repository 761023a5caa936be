"""The initramfs: reproducible, complete, and readable by our own cpio applet."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import OUT, k4s_cmd, require

IMAGE = OUT / "initramfs.cpio.zst"


def sha(path) -> str:  # type: ignore[no-untyped-def]
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.repro
def test_two_builds_give_the_same_sha256(tmp_path) -> None:
    require(IMAGE.exists(), str(IMAGE), "make image")
    # A second build from scratch: an empty segment cache, so every part is packed and compressed again.
    r = k4s_cmd("mkimage", "--out", str(tmp_path / "again.cpio.zst"), "--cache", str(tmp_path / "cache"),
                timeout=1800)
    assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "again.cpio.zst") == sha(IMAGE)
    assert "PART" in r.stdout and "kubernetes" in r.stdout and "modules" in r.stdout


def test_image_has_what_boot_needs(tmp_path) -> None:
    require(IMAGE.exists(), str(IMAGE), "make image")
    r = k4s_cmd("cpio", "-t", str(IMAGE), check=True, timeout=300)
    names = {ln.split()[2]: ln for ln in r.stdout.splitlines()}
    for dev in ("dev/console", "dev/null", "dev/urandom"):
        assert names[dev].startswith("c"), dev
    for path in ("usr/lib/k4s/k4s", "usr/lib/k4s/parts/k4s.squashfs", "usr/lib/k4s/parts/kubernetes.squashfs",
                 "usr/lib/k4s/parts/runtime.squashfs", "usr/lib/k4s/parts/images.squashfs", "etc/k4s/config.yaml",
                 "usr/sbin/nft", "usr/bin/busybox"):
        assert path in names, path
    assert names["usr/lib/k4s/k4s"].endswith("-> /usr/lib/k4s/parts/k4s/k4s")
    # the components' modprobe (kube-proxy's, at every start) is busybox's; the kernel's is k4s's
    assert names["usr/libexec/k4s/modprobe"].endswith("-> /usr/bin/busybox")
    assert names["usr/sbin/modprobe"].endswith("-> /usr/lib/k4s/k4s")
    # stage 0: /init loads the modules it names from the image, mounts the bundle, execs k4s init
    k4s_cmd("cpio", "-x", str(IMAGE), "-C", str(tmp_path / "x"), "--devices", check=True, timeout=300)
    tmp_path = tmp_path / "x"
    init = (tmp_path / "init").read_text()
    assert init.startswith("#!/usr/bin/busybox sh\n")
    kos = init.split("for ko in ", 1)[1].split(";", 1)[0].split()
    assert [k.rsplit("/", 1)[1] for k in kos] == ["loop.ko", "squashfs.ko"]
    for ko in kos:
        assert ko.lstrip("/") in names, ko
    assert "mount -t squashfs -o loop,ro /usr/lib/k4s/parts/k4s.squashfs /usr/lib/k4s/parts/k4s" in init
    assert "exec /usr/lib/k4s/k4s init" in init and "exec $b poweroff -f" in init
    # booted by stage 1: every part checked against the signed list before anything is mounted
    assert init.index("sha256sum -c /etc/k4s/parts.sha256") < init.index("mount -t squashfs")
    assert any(n.endswith("/modules.dep") for n in names)
    assert any("ld-linux-x86-64.so.2" in n for n in names)
    assert any(n.endswith("/libc.so.6") for n in names)
