"""The CoreDNS addon runs the node's own coredns program from a read-only hostPath."""

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
