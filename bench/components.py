"""Component sizes; the kube multicall against the separate upstream binaries built the same way;
warm build time, and the cold build times recorded when each cache entry was made."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BIN, CACHE, ROOT

TITLE = "components"
BOOTS = False
SEPARATE = {"kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler", "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
            # the upstream mains of the other programs in the multicall; CoreDNS with the same plugins
            "etcd": "go.etcd.io/etcd/server/v3", "etcdctl": "go.etcd.io/etcd/etcdctl/v3", "coredns": "./coredns",
            "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
            "ctr": "github.com/containerd/containerd/v2/cmd/ctr", "crictl": "sigs.k8s.io/cri-tools/cmd/crictl",
            "flanneld": "./flanneld"}
FLANNELD_MAIN = ('package main\n\nimport "k4s.dev/components/kube/flannel"\n\n'
                 "func main() { flannel.Main() }\n")  # the multicall's flannel package on its own


def coredns_main(kube_main: str) -> str:
    """CoreDNS's main with the plugins the multicall links (upstream's links ~50 more)."""
    plugins = re.findall(r'_ "(github.com/coredns/coredns/plugin/\w+)"', kube_main)
    directives = re.search(r"corednsDirectives = (\[\]string\{.*?\})", kube_main, re.S).group(1)  # type: ignore[union-attr]
    return ("package main\n\nimport (\n\t\"github.com/coredns/coredns/core/dnsserver\"\n"
            "\t\"github.com/coredns/coredns/coremain\"\n" + "".join(f'\t_ "{p}"\n' for p in plugins)
            + f")\n\nfunc main() {{\n\tdnsserver.Directives = {directives}\n\tcoremain.Run()\n}}\n")


def measure() -> dict:
    lock = json.loads((ROOT / "build/components/lock.json").read_text())
    sizes = {}
    for c in lock["components"]:
        for o in c["outputs"]:
            sizes[o["name"]] = (BIN / o["name"]).resolve().stat().st_size
    sep_dir = CACHE / "bench-separate" / lock["components"][0]["version"]
    sep_dir.mkdir(parents=True, exist_ok=True)
    missing = {n: pkg for n, pkg in SEPARATE.items() if not (sep_dir / n).exists()}
    if missing:
        # in a copy of the module, with CoreDNS's main beside ours: -mod=mod may touch go.mod
        with tempfile.TemporaryDirectory() as tmp:
            kube_dir = Path(tmp) / "kube"
            shutil.copytree(ROOT / "build/components/kube", kube_dir)
            (kube_dir / "coredns").mkdir()
            (kube_dir / "coredns" / "main.go").write_text(coredns_main((kube_dir / "main.go").read_text()))
            (kube_dir / "flanneld").mkdir()
            (kube_dir / "flanneld" / "main.go").write_text(FLANNELD_MAIN)
            env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -trimpath -buildvcs=false"}
            tags = ",".join(lock["components"][0]["outputs"][0].get("tags", []))
            for name, pkg in missing.items():
                print(f"bench: building separate {name} (same flags as the multicall)", flush=True)
                subprocess.run(["go", "build", "-tags", tags, "-ldflags", "-s -w -buildid=", "-o",
                                str(sep_dir / name), pkg], cwd=kube_dir, env=env, check=True)
    separate = {n: (sep_dir / n).stat().st_size for n in SEPARATE}
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "build/components/build.py")], check=True, capture_output=True)
    warm = time.perf_counter() - t
    cold = {}
    for c in lock["components"]:
        for done in (CACHE / "components" / c["name"]).glob("*/.done"):
            cold[c["name"]] = json.loads(done.read_text()).get("seconds")
    return {"sizes_mb": {k: round(v / 1e6, 1) for k, v in sizes.items()},
            "kube_multicall_mb": round(sizes["kube"] / 1e6, 1),
            "separate_sum_mb": round(sum(separate.values()) / 1e6, 1),
            "separate_mb": {k: round(v / 1e6, 1) for k, v in separate.items()},
            "multicall_ratio": round(sizes["kube"] / sum(separate.values()), 2),
            "warm_build_s": round(warm, 1), "build_s_when_cache_was_made": cold}


def render(r: dict) -> list[str]:
    c = r["components"]
    return ["**Components** (MB): " + ", ".join(f"{k} {v}" for k, v in c["sizes_mb"].items()), "",
            f"kube multicall {c['kube_multicall_mb']} MB vs {c['separate_sum_mb']} MB for the "
            f"{len(c['separate_mb'])} separate upstream binaries built the same way: **{c['multicall_ratio']:.0%}** of "
            f"the sum. Warm `make components`: {c['warm_build_s']} s; build seconds recorded when each cache entry was "
            f"made: {c['build_s_when_cache_was_made']}.", ""]
