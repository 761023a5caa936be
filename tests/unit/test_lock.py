"""The lock is the one place an upstream version is written: the build, the README's table and
the release-download list all follow it, and a check fails where they disagree."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import ROOT, components_build

build = components_build()
LOCK = json.loads(build.LOCK.read_text())
RELEASES = json.loads((ROOT / "build" / "components" / "releases.json").read_text())


def pinned() -> dict[str, str]:
    """name -> version, for every component and every module pinned into one."""
    return {p["name"]: p["version"] for c in LOCK["components"] for p in build.upstreams(c)}


def test_release_downloads_are_the_locked_versions() -> None:
    versions = pinned()
    for source in RELEASES["sources"]:
        assert source["component"] in versions, f"releases.json has {source['component']}, the lock does not"
        assert source["version"] == versions[source["component"]], (
            f"releases.json downloads {source['component']} {source['version']}, "
            f"lock.json builds {versions[source['component']]}")


def test_readme_table_and_k4s_version_are_generated_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    assert build.readme_with_table(readme, LOCK) == readme, "run `python3 build/components/build.py --table`"
    assert build.VERSIONS_PY.read_text() == build.versions_module(LOCK), "run `build.py --table`"
    for name, version in pinned().items():
        assert f"| {build.TITLES.get(name, name)} | {version} |" in readme
    from tests.conftest import k4s_cmd

    listed = k4s_cmd("--version", check=True).stdout.splitlines()
    assert listed[0].startswith("k4s ")
    assert dict(line.split(" ", 1) for line in listed[1:]) == build.versions(LOCK)
    assert f"kubernetes {LOCK['components'][0]['version']}" in listed


def test_every_version_a_build_names_is_in_the_lock() -> None:
    for comp in LOCK["components"]:
        for text in [*(f for o in comp["outputs"] for f in o.get("ldflags", [])),
                     *(c["expect"] for c in comp.get("checks", []))]:
            expanded = build.expand(text, comp)
            assert "{" not in expanded and "v0.0.0" not in expanded


def test_a_version_written_twice_fails() -> None:
    build.check_pins_agree(LOCK)
    lock = copy.deepcopy(LOCK)
    kube = next(c for c in lock["components"] if c["name"] == "kube")
    kube["pins"].append({"name": "runc", "module": "github.com/opencontainers/runc", "version": "v1.0.0"})
    with pytest.raises(build.BuildError, match="one version, in both places"):
        build.check_pins_agree(lock)
    with pytest.raises(build.BuildError, match="names a version the lock does not have"):
        build.expand("-X main.v={nosuch}", kube)


# --- our patches to upstream files --------------------------------------------------------------

KUBE = next(c for c in LOCK["components"] if c["name"] == "kube")


def test_every_patch_applies_to_the_pinned_module_and_names_its_reason(tmp_path) -> None:
    patches = sorted((build.HERE / KUBE["dir"] / "patches").glob("*.patch"))
    assert patches
    for p in patches:
        head = p.read_text().split("\n--- ", 1)[0]
        assert "Why:" in head, f"{p.name}: say why at its head"
    work = build.patched_workspace(KUBE, tmp_path / "ws")
    assert work is not None
    gowork = work.read_text()
    # relative: the binary records these lines, the same wherever it is built
    replaced = [ln.split()[1] for ln in gowork.splitlines() if ln.startswith("replace ")]
    assert all(f"replace {m} => ./{m}" in gowork for m in replaced)
    for p in patches:
        for target in build.patch_targets(p):
            assert any(target.startswith(m + "/") for m in replaced), target
            # every line the patch adds is in the file the build compiles
            text = (tmp_path / "ws" / target).read_text()
            added = [ln[1:] for ln in p.read_text().split("\n--- ", 1)[1].splitlines()
                     if ln.startswith("+") and not ln.startswith("+++")]
            assert added and all(ln in text for ln in added), (p.name, target)
    cert = (tmp_path / "ws" / "k8s.io" / "client-go" / "util" / "cert" / "cert.go").read_text()
    assert "ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)" in cert and "rsa.GenerateKey" not in cert


def test_a_patch_that_no_longer_applies_fails_the_build_with_a_hint(tmp_path) -> None:
    comp = tmp_path / "comp"
    (comp / "patches").mkdir(parents=True)
    for f in ("go.mod", "go.sum"):
        (comp / f).write_bytes((build.HERE / KUBE["dir"] / f).read_bytes())
    good = next((build.HERE / KUBE["dir"] / "patches").glob("*.patch")).read_text()
    # upstream changed a line the patch's context names
    (comp / "patches" / "stale.patch").write_text(good.replace(' \t"bytes"\n', ' \t"bytes/changed"\n', 1))
    with pytest.raises(build.BuildError, match=r"stale.patch does not apply to the pinned module.*hint: the upstream"):
        build.patched_workspace(KUBE | {"dir": str(comp)}, tmp_path / "ws")
    (comp / "patches" / "stale.patch").write_text("not a diff\n")
    with pytest.raises(build.BuildError, match="no \\+\\+\\+ line: not a unified diff"):
        build.patched_workspace(KUBE | {"dir": str(comp)}, tmp_path / "ws")
