"""The addons run the node's own programs (coredns, local-path-provisioner) from a read-only hostPath."""

from pathlib import Path

import pytest

from k4s import config
from k4s.cluster import addons
from k4s.image import oci


def deployment(binary: Path) -> dict:
    cfg = config.load(config_file=None, cmdline="")
    [dep] = [o for o in addons.coredns(cfg, binary) if o["kind"] == "Deployment"]
    return dep["spec"]["template"]["spec"]


@pytest.mark.parametrize("binary, command", [
    (Path("/k4s/parts/kubernetes/kube"), [f"{addons.NODE_BIN}/kube", "coredns"]),  # the multicall
    (Path("/opt/bin/coredns"), [f"{addons.NODE_BIN}/coredns"]),  # a separate release binary
])
def test_coredns_runs_node_binary_read_only(binary: Path, command: list[str]) -> None:
    spec = deployment(binary)
    [c] = spec["containers"]
    assert c["image"] == oci.SCRATCH
    assert c["command"] == command
    assert c["args"] == ["-conf", "/etc/coredns/Corefile"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == addons.NODE_BIN)
    assert mount["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol["hostPath"] == {"path": str(binary.parent), "type": "Directory"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def local_path_objects(binary: Path = Path("/k4s/parts/kubernetes/kube")) -> dict[str, dict]:
    cfg = config.load(config_file=None, cmdline="")
    return {o["kind"]: o for o in addons.local_path(cfg, binary, Path("/var/lib/k4s/storage"))}


def test_local_path_is_the_default_storage_class_and_runs_the_node_s_program() -> None:
    objs = local_path_objects()
    sc = objs["StorageClass"]
    assert sc["metadata"]["annotations"][addons.DEFAULT_CLASS] == "true"
    assert (sc["provisioner"], sc["volumeBindingMode"]) == ("rancher.io/local-path", "WaitForFirstConsumer")
    spec = objs["Deployment"]["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["image"] == oci.SCRATCH and c["imagePullPolicy"] == "Never"
    assert c["command"][:2] == [f"{addons.NODE_BIN}/kube", "local-path-provisioner"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_local_path_volumes_live_under_storage_and_its_helpers_run_busybox_without_volumes() -> None:
    import json

    import yaml

    data = local_path_objects()["ConfigMap"]["data"]
    [paths] = json.loads(data["config.json"])["nodePathMap"]
    assert paths["paths"] == ["/var/lib/k4s/storage"]
    helper = yaml.safe_load(data["helperPod.yaml"])
    [c] = helper["spec"]["containers"]
    assert c["image"] == oci.BUSYBOX and c["imagePullPolicy"] == "Never"
    # what local-path-provisioner >= 0.0.36 refuses in a helper template (unless told not to)
    assert "volumes" not in helper["spec"] and "volumeMounts" not in c
    assert 'mkdir -m 0777 -p "$VOL_DIR"' in data["setup"] and 'rm -rf "$VOL_DIR"' in data["teardown"]
