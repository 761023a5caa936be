"""The pinned upstream components: versions as built, images as containerd sees them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from k4s.cluster import tasks
from k4s.image import oci
from tests.conftest import OUT, ROOT, components_build, need_root, require
from tests.integration.conftest import BIN

LOCK = json.loads((ROOT / "build" / "components" / "lock.json").read_text())
CHECKS = [(c, chk) for c in LOCK["components"] for chk in c["checks"]]


@pytest.mark.parametrize("comp,check", CHECKS, ids=[f"{c['name']}:{k['run'][0]}" for c, k in CHECKS])
def test_binary_reports_pinned_version(comp, check) -> None:
    exe = BIN / check["run"][0]  # for the multicall, a symlink name such as kubelet -> kube
    require(exe.exists(), f"component {exe}", "make components")
    r = subprocess.run([str(exe), *check["run"][1:]], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert components_build().expand(check["expect"], comp) in r.stdout + r.stderr


def test_lock_pins_every_output_with_sha256() -> None:
    for c in LOCK["components"]:
        assert set(c["sha256"]) == {o["name"] for o in c["outputs"]}, c["name"]
        for digest in c["sha256"].values():
            assert len(digest) == 64


def test_images_are_deterministic(tmp_path) -> None:
    require((BIN / "pause").exists(), "built components", "make components")
    from tests.conftest import k4s_cmd

    a = k4s_cmd("oci", "build", "--bin", str(BIN), "--out", str(tmp_path / "a"), check=True).stdout
    b = k4s_cmd("oci", "build", "--bin", str(BIN), "--out", str(tmp_path / "b"), check=True).stdout
    assert a.replace("/a/", "/x/") == b.replace("/b/", "/x/")
    for t in ("pause", "scratch", "busybox"):
        assert (tmp_path / "a" / f"{t}.tar").read_bytes() == (tmp_path / "b" / f"{t}.tar").read_bytes()


@pytest.fixture
def containerd(tmp_path):
    need_root()
    require((BIN / "containerd").exists(), "built components", "make components")
    sock = tmp_path / "containerd.sock"
    conf = tmp_path / "config.toml"
    conf.write_text(f'version = 3\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{sock}"\n')
    logf = open(tmp_path / "containerd.log", "w")
    proc = subprocess.Popen([str(BIN / "containerd"), "--config", str(conf)], stdout=logf, stderr=subprocess.STDOUT,
                            env={"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"})
    end = time.monotonic() + 30
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            break
        except OSError:
            assert time.monotonic() < end and proc.poll() is None, (tmp_path / "containerd.log").read_text()
            time.sleep(0.2)
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


@pytest.mark.parametrize("stem", ["pause", "scratch", "busybox"])
def test_containerd_imports_image_with_name_and_digest(containerd: Path, stem: str) -> None:
    tar = OUT / "images" / f"{stem}.tar"
    require(tar.exists(), f"image {tar}", "make images")
    [want] = oci.read_index(tar)
    ctr = [str(BIN / "ctr"), f"--address={containerd}", "--namespace=k8s.io"]
    # as the node imports it (k4s.cluster.tasks)
    r = subprocess.run(tasks.import_argv(ctr, tar), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, timeout=30, check=True)
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    names = {row[0]: row[2] for row in rows}
    name = want["annotations"]["io.containerd.image.name"]
    assert names.get(name) == want["digest"], r.stdout
    # pinned: the kubelet's image GC never removes an airgap image (there is no registry to pull it again)
    [row] = [row for row in rows if row[0] == name]
    assert tasks.PINNED in row[-1].split(","), r.stdout
    assert name.startswith(oci.REGISTRY + "/" + stem + ":")


MAINS = [c for c in LOCK["components"] if c.get("mains")]


@pytest.mark.parametrize("comp", MAINS, ids=[c["name"] for c in MAINS])
def test_upstream_mains_are_exactly_what_the_pinned_module_makes(comp, tmp_path, monkeypatch) -> None:
    """local-path-provisioner's and the CNI plugins' code in a multicall is the pinned module's, renamed: a changed
    byte in the checked-in copy, or a file upstream does not have, stops the build."""
    import shutil

    require(bool(shutil.which("go")), "go", "install Go (make setup checks it)")
    build = components_build()
    build.check_mains(comp, regen=False)  # the checked-in copy
    copy = tmp_path / comp["dir"]
    shutil.copytree(ROOT / "build" / "components" / comp["dir"], copy)
    monkeypatch.setattr(build, "HERE", tmp_path)
    m = comp["mains"][0]
    victim = sorted((copy / m["dir"]).glob("*.go"))[0]
    victim.write_text(victim.read_text().replace("func ", "func  ", 1))
    with pytest.raises(build.BuildError, match="is not what the pinned module makes"):
        build.check_mains(comp, regen=False)
    build.check_mains(comp, regen=True)
    (copy / m["dir"] / "extra.go").write_text(f"package {m['dir']}\n")
    with pytest.raises(build.BuildError, match="is not in the pinned module"):
        build.check_mains(comp, regen=False)
