#!/usr/bin/env python3
"""k4s benchmarks: numbers to bench/results.json and into README.md.

    python3 bench/run.py [--skip-boot] [--skip-components]

Measures, on this machine, in one run (ratios side by side where a baseline exists):
  - start-up of the frozen `k4s --version` and an applet dispatch, against a bare
    PyInstaller onedir hello-world built the same way;
  - bundle size and its biggest parts;
  - component sizes, the kube multicall against the separate upstream binaries
    built the same way, cold and warm build times;
  - `k4s server --control-plane-only`: time to apiserver ready, per-component
    start times, RSS of each component and of k4s at idle;
  - the appliance in QEMU (TCG): boot timeline, memory used at idle, the smallest
    -m that still reaches Ready, initramfs size by part;
  - network and firmware boot: PXE and LinuxBoot to Ready, stage-1 size, fetch + verify;
  - a fleet of two: worker boot to Ready, worker idle memory, pod-to-pod round trip and
    throughput across nodes next to the same node.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
BENCH = OUT / "bench"
RESULTS = ROOT / "bench" / "results.json"  # kept in git: `--only` on a fresh clone keeps the other sections
BIN = OUT / "components" / "bin"
CACHE = Path(os.environ.get("K4S_CACHE", "/var/cache/k4s"))
sys.path.insert(0, str(ROOT))


def sh(*args: str, **kw) -> str:  # type: ignore[no-untyped-def]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def timed_runs(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - t)
    return out


# --- start-up ----------------------------------------------------------------------------

def hello_bundle() -> Path:
    exe = BENCH / "hello" / "hello"
    if exe.exists():
        return exe
    work = Path(tempfile.mkdtemp())
    src = work / "hello.py"
    src.write_text("import sys\nprint('hello')\n")
    sh(sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--onedir", "--strip",
       "--workpath", str(work / "w"), "--distpath", str(BENCH), "--specpath", str(work), str(src))
    return exe


def bench_startup() -> dict:
    hello = hello_bundle()
    k4s = OUT / "k4s" / "k4s"
    links = Path(tempfile.mkdtemp())
    (links / "lsmod").symlink_to(k4s)
    cases = {"hello": [str(hello)], "k4s --version": [str(k4s), "--version"], "lsmod (applet)": [str(links / "lsmod")]}
    for argv in cases.values():
        timed_runs(argv, 3)  # warm the page cache
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(15):  # interleaved, so machine noise hits every case alike
        for k, argv in cases.items():
            samples[k] += timed_runs(argv, 2)
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    return {"median_ms": {k: round(v, 1) for k, v in med.items()},
            "ratio_version": round(med["k4s --version"] / med["hello"], 2),
            "ratio_applet": round(med["lsmod (applet)"] / med["hello"], 2)}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def bench_bundle() -> dict:
    internal = OUT / "k4s" / "_internal"
    parts = {p.name: (du(p) if p.is_dir() else p.stat().st_size) for p in internal.iterdir()}
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:6]
    return {"total_mb": round(du(OUT / "k4s") / 1e6, 1), "biggest": {k: round(v / 1e6, 1) for k, v in top}}


# --- components --------------------------------------------------------------------------

SEPARATE = {"kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler", "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
            # the upstream mains of the other programs in the multicall; CoreDNS with the same plugins
            "etcd": "go.etcd.io/etcd/server/v3", "etcdctl": "go.etcd.io/etcd/etcdctl/v3", "coredns": "./coredns"}


def coredns_main(kube_main: str) -> str:
    """CoreDNS's main with the plugins the multicall links (upstream's links ~50 more)."""
    plugins = re.findall(r'_ "(github.com/coredns/coredns/plugin/\w+)"', kube_main)
    directives = re.search(r"corednsDirectives = (\[\]string\{.*?\})", kube_main, re.S).group(1)
    return ("package main\n\nimport (\n\t\"github.com/coredns/coredns/core/dnsserver\"\n"
            "\t\"github.com/coredns/coredns/coremain\"\n" + "".join(f'\t_ "{p}"\n' for p in plugins)
            + f")\n\nfunc main() {{\n\tdnsserver.Directives = {directives}\n\tcoremain.Run()\n}}\n")


def bench_components() -> dict:
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
            env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -trimpath -buildvcs=false"}
            for name, pkg in missing.items():
                print(f"bench: building separate {name} (same flags as the multicall)", flush=True)
                subprocess.run(["go", "build", "-ldflags", "-s -w -buildid=", "-o", str(sep_dir / name), pkg],
                               cwd=kube_dir, env=env, check=True)
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


# --- k4s server on the host --------------------------------------------------------------

def bench_server(processes: str) -> dict:
    import psutil

    tmp = Path(tempfile.mkdtemp())
    argv = [sys.executable, "-m", "k4s", "server", "--control-plane-only", "--cmdline", "", "--config", os.devnull,
            "--set", f"data-dir={tmp}/data", "--set", f"run-dir={tmp}/run", "--set", f"bin-dir={BIN}",
            "--set", f"write-kubeconfig={tmp}/kc", "--set", "node-name=bench", "--set", "node-ip=127.0.0.1",
            "--set", f"component-processes={processes}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = {}
    try:
        while time.monotonic() - t0 < 180:
            try:
                status = json.loads((tmp / "run/status.json").read_text())["components"]
                if status["kube-apiserver"]["ready"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        api_ready = time.monotonic() - t0
        while not all(c["ready"] for c in status.values()) and time.monotonic() - t0 < 180:
            time.sleep(0.2)
            status = json.loads((tmp / "run/status.json").read_text())["components"]
        time.sleep(30)  # idle
        status = json.loads((tmp / "run/status.json").read_text())["components"]
        # PSS: shared pages (the multicall's text, mapped by five processes) split between their users
        # one entry per process, named by the components in it
        by_pid: dict[int, list[str]] = {}
        for n, c in status.items():
            if c["pid"]:
                by_pid.setdefault(c["pid"], []).append(n)
        pids = {" + ".join(ns): p for p, ns in by_pid.items()} | {"k4s (supervisor)": proc.pid}
        full = {n: psutil.Process(p).memory_full_info() for n, p in pids.items()}
        rss = {n: round(m.rss / 2**20, 1) for n, m in full.items()}
        pss = {n: round(m.pss / 2**20, 1) for n, m in full.items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"apiserver_ready_s": round(api_ready, 2),
            "component_start_s": {n: c["started_after"] for n, c in status.items()},
            "component_ready_in_s": {n: c["ready_after"] for n, c in status.items()},
            "idle_rss_mib": rss, "idle_pss_mib": pss, "idle_pss_total_mib": round(sum(pss.values()), 1)}


# --- the appliance -----------------------------------------------------------------------

# (stage, component, event): read from the guest's events (JSON lines), never the console text
STAGES = [("/init", "init", "start"), ("mounts", "init", "mounts"), ("modules", "init", "modules"),
          ("network", "init", "network"), ("pki", "etcd", "start"), ("etcd ready", "etcd", "ready"),
          ("apiserver ready", "kube-apiserver", "ready"), ("node Ready", "node", "ready"),
          ("CoreDNS Ready", "coredns", "ready")]


def boot(memory: int, wait_idle: float = 0, append: str = "", disk: Path | None = None) -> dict:
    from k4s import log
    from k4s.errors import K4sError
    from k4s.host.vm import VM

    tmp = Path(tempfile.mkdtemp())
    vm = VM(tmp, OUT / "vmlinuz", OUT / "initramfs.cpio.zst", memory=memory, port=16543, append=append, disk=disk)
    t0 = time.monotonic()
    proc = vm.start()
    result: dict = {"memory_mib": memory}
    try:
        vm.wait_ready(proc, timeout=600, echo=False)
        result["ready_wall_s"] = round(time.monotonic() - t0, 1)
        end = time.monotonic() + max(wait_idle, 0)
        while time.monotonic() < end:
            time.sleep(5)
        events = log.read_events(vm.events)
        result["timeline_s"] = {}
        for name, component, what in STAGES:
            hit = next((e for e in events if e.get("component") == component and e.get("event") == what), None)
            result["timeline_s"][name] = hit["t"] if hit else None
        stats = [e for e in events if e.get("event") == "stats"]
        if stats:  # the last one: mem_used_mib (MemTotal - MemAvailable), anon_mib, shmem_mib, kernel_mib
            last = stats[-1]
            result["idle_mem_used_mib"] = int(last["mem_used_mib"])
            result["idle_mem_mib"] = {k: int(v) for k, v in last.items() if k.endswith("_mib")}
            ready_at = result["timeline_s"].get("node Ready") or 0
            result["available_after_ready_mib"] = [int(e["mem_total_mib"]) - int(e["mem_used_mib"])
                                                   for e in stats if e["t"] >= ready_at]
        result["ready"] = True
    except K4sError as e:
        result["ready"] = False
        result["error"] = e.message
    finally:
        vm.power_off(120)
        if proc.poll() is None:
            proc.kill()
    return result


def image_parts() -> dict:
    report = OUT / "image-report.json"
    sh(sys.executable, "-m", "k4s", "mkimage", "--out", str(OUT / "initramfs.cpio.zst"), "--report", str(report),
       cwd=ROOT)
    return {s["part"]: {"unpacked_mb": round(s["unpacked"] / 1e6, 1), "compressed_mb": round(s["compressed"] / 1e6, 1)}
            for s in json.loads(report.read_text())["segments"]}


def bench_appliance() -> dict:
    res = {"image_parts": image_parts(), "boot_1024": boot(1024, wait_idle=90),
           # the baseline: one process per component
           "boot_1024_separate": boot(1024, wait_idle=90, append="k4s.component-processes=separate")}
    for mem in SMALL:
        res[f"boot_{mem}"] = fit(mem)
        if not res[f"boot_{mem}"].get("ready"):
            break
    # the baseline: the same 512 MiB machine without compressed swap
    res["boot_512_nozram"] = fit(512, append="k4s.zram=0")
    res["smallest_ready_mib"] = min([1024] + [m for m in SMALL if res.get(f"boot_{m}", {}).get("ready")])
    return res


SMALL = (768, 640, 512)  # -m in MiB, down to the first that does not reach Ready


def fit(mem: int, append: str = "") -> dict:
    """A boot in a small machine: Ready or not, CoreDNS Ready or not, and what is left 120 s after Ready."""
    r = boot(mem, wait_idle=120, append=append)
    out = {k: r.get(k) for k in ("ready", "ready_wall_s", "error")}
    out["coredns_ready_s"] = r.get("timeline_s", {}).get("CoreDNS Ready")
    if m := r.get("idle_mem_mib"):
        # one stats line swings by 15-20 MiB on a thrashing machine: the median of the window's
        avail = r.get("available_after_ready_mib") or [m["mem_total_mib"] - m["mem_used_mib"]]
        out |= {"idle_available_mib": int(statistics.median(avail)), "idle_available_min_mib": min(avail),
                "mem_total_mib": m["mem_total_mib"],
                "swapped_mib": m.get("swapped_mib", 0), "zram_mib": m.get("zram_mib", 0)}
    return out


def bench_datadisk() -> dict:
    """The same 1 GiB boot with a data disk: first on a blank one (formatted at boot), then again
    on the state the first left (etcd, PKI, images already there)."""
    disk = Path(tempfile.mkdtemp()) / "data.qcow2"
    first = boot(1024, wait_idle=60, append="k4s.data=LABEL=K4SDATA k4s.data-format=1", disk=disk)
    again = boot(1024, wait_idle=60, append="k4s.data=LABEL=K4SDATA", disk=disk)
    keep = ("ready", "ready_wall_s", "error", "idle_mem_used_mib", "idle_mem_mib")
    return {"first": {k: first.get(k) for k in keep}, "again": {k: again.get(k) for k in keep},
            "node_ready_s": {"first": first.get("timeline_s", {}).get("node Ready"),
                             "again": again.get("timeline_s", {}).get("node Ready")},
            "disk_mib_used": round(disk.stat().st_size / 2**20, 1)}


# --- netboot: stage-1 size, fetch + verify speed, PXE and LinuxBoot to Ready ---------------------

def boot_wall(vm, srv) -> dict:  # type: ignore[no-untyped-def]
    """QEMU start to node Ready, in seconds, for a VM set up to boot some way."""
    from k4s import log
    from k4s.errors import K4sError

    t0 = time.monotonic()
    proc = vm.start()
    try:
        vm.wait_ready(proc, timeout=600, echo=False)
        out = {"ready": True, "ready_wall_s": round(time.monotonic() - t0, 1)}
        ev = {(e["component"], e["event"]): e for e in log.read_events(vm.events)}
        if ("stage1", "payload-verified") in ev:
            v = ev[("stage1", "payload-verified")]
            out["stage1_verified_mb"] = round(v["bytes"] / 1e6, 1)
            out["stage1_fetch_verify_s"] = v["seconds"]
        return out
    except K4sError as e:
        return {"ready": False, "error": e.message}
    finally:
        vm.power_off(120)
        if proc.poll() is None:
            proc.kill()
        srv.shutdown()


def bench_netboot() -> dict:
    from k4s.boot import stage1
    from k4s.host import netboot
    from k4s.host.vm import CMDLINE, VM
    from k4s.image import manifest

    res: dict = {}
    kernel, st1 = OUT / "vmlinuz", OUT / "stage1.cpio.xz"
    res["stage1_kernel_mib"] = round(kernel.stat().st_size / 2**20, 2)
    res["stage1_initramfs_mib"] = round(st1.stat().st_size / 2**20, 2)
    res["stage1_total_mib"] = round(res["stage1_kernel_mib"] + res["stage1_initramfs_mib"], 2)
    internal = OUT / "stage1" / "k4s" / "_internal"
    sizes = {p.name: du(p) for p in internal.iterdir()}
    res["stage1_biggest_mb"] = {k: round(v / 1e6, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:6]}

    tmp = Path(tempfile.mkdtemp())
    try:
        vm2 = VM(tmp / "s2", kernel, OUT / "initramfs.cpio.zst", operator_dir=tmp / "operator")
        vm2.out.mkdir(parents=True)
        seed = tmp / "seed.cpio.zst"
        seed.write_bytes(vm2.seed())
        cmdline = CMDLINE
        payload = tmp / "payload"
        netboot.prepare(payload, kernel, [vm2.initrd, seed], cmdline, "http://${next-server}:18181/",
                        key=OUT / "keys" / "signing.key")
        # fetch + verify on the host, over loopback: the code stage 1 runs
        srv = netboot.serve_in_thread(payload)
        t0 = time.monotonic()
        m = stage1.fetch_verified(f"http://127.0.0.1:{srv.server_address[1]}/", tmp / "fetched",
                                  manifest.public_key(OUT / "keys" / "signing.pub"))
        secs = time.monotonic() - t0
        srv.shutdown()
        total = sum(a.size for a in m.artifacts)
        res["host_fetch_verify_s_per_100mb"] = round(secs / (total / 1e8), 2)
        shutil.rmtree(tmp / "fetched")
        # PXE: the NIC's iPXE ROM, boot.ipxe over TFTP, the rest over HTTP
        srv = netboot.serve_in_thread(payload, port=18181)
        res["pxe"] = boot_wall(VM(tmp / "pxe", kernel, vm2.initrd, port=16544, operator_dir=tmp / "operator",
                                  pxe=payload), srv)
        # LinuxBoot: stage 1 as -kernel/-initrd, stage 2 fetched, verified, kexec'd
        srv = netboot.serve_in_thread(payload)
        vm1 = VM(tmp / "st1", kernel, st1, port=16545, operator_dir=tmp / "operator", seeded=False,
                 append=f"k4s.payload=http://10.0.2.2:{srv.server_address[1]}/")
        res["stage1"] = boot_wall(vm1, srv)
        if res["stage1"].get("stage1_verified_mb"):
            res["qemu_fetch_verify_s_per_100mb"] = round(
                res["stage1"]["stage1_fetch_verify_s"] / (res["stage1"]["stage1_verified_mb"] / 100), 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# --- report ------------------------------------------------------------------------------

# --- a fleet of two: worker boot, idle memory, pod network across nodes -------------------------

FLEET_PODS = """apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: k4s.local/busybox:1.36
    imagePullPolicy: Never
    # one connection each: busybox's nc ends at EOF on its stdin, so that is a pipe that stays open
    command: ["sh", "-c", "sleep 100000 | nc -l -p 9000 > /dev/null; exec sleep 100000"]
  terminationGracePeriodSeconds: 0
"""
THROUGHPUT_MB = 64


def bench_fleet() -> dict:
    """A server and a worker joined with `k4s token create`'s join segment on a QEMU lan: the worker's
    boot to Ready and idle memory; pod-to-pod round trip and throughput, same node and across."""
    from k4s import log
    from k4s.host.vm import VM

    tmp = Path(tempfile.mkdtemp())
    kernel, initrd = OUT / "vmlinuz", OUT / "initramfs.cpio.zst"
    port = 17790
    server = VM(tmp / "server", kernel, initrd, memory=1536, port=16544, lan_ports=(port,),
                append="k4s.interface=eth1 k4s.ip=10.77.0.1/24 k4s.mgmt-interface=eth0")
    procs = [server.start()]
    worker: VM | None = None
    out: dict = {}
    try:
        server.wait_ready(procs[0], timeout=900, echo=False)
        server.write_kubeconfig()
        segment = tmp / "worker.join"
        sh(sys.executable, "-m", "k4s", "token", "create", "--kubeconfig", str(server.kubeconfig), "--node", "k4s-007702",
           "--segment", str(segment), cwd=ROOT)
        worker = VM(tmp / "worker", kernel, initrd, memory=1024, lan_connect=port, mac="52:54:00:00:77:02",
                    seeded=False, append="k4s.ip=10.77.0.2/24 k4s.gateway=10.77.0.1", join_secret=segment)
        t0 = time.monotonic()
        procs.append(worker.start())
        name = worker.wait_ready(procs[1], timeout=600, echo=False)
        out["worker_ready_wall_s"] = round(time.monotonic() - t0, 1)
        ready = next(e for e in log.read_events(worker.events) if e.get("component") == "node" and e.get("event") == "ready")
        out["worker_ready_s"] = ready["t"]

        def kubectl(*args: str, stdin: str | None = None) -> str:
            return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(server.kubeconfig), *args], input=stdin,
                                  capture_output=True, text=True, check=True, timeout=300).stdout

        server_node = next(n for n in kubectl("get", "nodes", "-o", "name").split() if not n.endswith(name))
        server_node = server_node.split("/", 1)[1]
        pods = {"a": server_node, "b": server_node, "c": name}  # a sends to b (same node) and to c (across)
        kubectl("apply", "-f", "-", stdin="---\n".join(FLEET_PODS.format(name=p, node=n) for p, n in pods.items()))
        kubectl("wait", "--for=condition=Ready", *(f"pod/{p}" for p in pods), "--timeout=300s")
        ips = {p: kubectl("get", "pod", p, "-o", "jsonpath={.status.podIP}") for p in pods}
        for label, dst in (("same_node", "b"), ("cross_node", "c")):
            ping = kubectl("exec", "a", "--", "ping", "-c", "20", "-i", "0.2", ips[dst])
            m = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", ping)
            out[f"{label}_rtt_ms"] = float(m.group(1)) if m else None
            # dd's time (busybox `time`): it ends once the last bytes are in the pipe, a few hundred KiB
            # ahead of the receiver; busybox's dd prints no rate of its own
            timed = kubectl("exec", "a", "--", "sh", "-c", f"time dd if=/dev/zero bs=65536 count={THROUGHPUT_MB * 16} "
                            f"2>/tmp/t | nc -w 3 {ips[dst]} 9000; cat /tmp/t")
            m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", timed)
            secs = int(m.group(1)) * 60 + float(m.group(2)) if m else 0
            out[f"{label}_mb_s"] = round(THROUGHPUT_MB * 1.048576 / secs, 1) if secs else None
        time.sleep(60)  # the worker idle, then its last stats line
        stats = [e for e in log.read_events(worker.events) if e.get("event") == "stats"]
        if stats:
            out["worker_idle_mem_used_mib"] = int(stats[-1]["mem_used_mib"])
            out["worker_idle_mem_mib"] = {k: int(v) for k, v in stats[-1].items() if k.endswith("_mib")}
    except Exception as e:  # noqa: BLE001 - a failed bench is reported, not raised
        out["error"] = str(e)[:500]
    finally:
        for vm in [v for v in (worker, server) if v is not None]:
            vm.power_off(120)
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def markdown(r: dict) -> str:
    L = [f"Measured {r['date']} on {r['machine']} (`make bench`; raw numbers in bench/results.json).", ""]
    if "startup" in r:
        s = r["startup"]
        L += ["**Start-up** (median, frozen onedir, interleaved runs):", "",
              "| command | ms | vs hello-world |", "|---|---|---|",
              f"| bare PyInstaller hello-world | {s['median_ms']['hello']} | 1.00 |",
              f"| `k4s --version` | {s['median_ms']['k4s --version']} | {s['ratio_version']} |",
              f"| `lsmod` (applet dispatch via symlink) | {s['median_ms']['lsmod (applet)']} | {s['ratio_applet']} |", ""]
    if "bundle" in r:
        b = r["bundle"]
        L += [f"**Frozen bundle**: {b['total_mb']} MB; biggest parts: "
              + ", ".join(f"{k} {v} MB" for k, v in b["biggest"].items()), ""]
    if "components" in r:
        c = r["components"]
        L += ["**Components** (MB): " + ", ".join(f"{k} {v}" for k, v in c["sizes_mb"].items()), "",
              f"kube multicall {c['kube_multicall_mb']} MB vs {c['separate_sum_mb']} MB for the "
              f"{len(c['separate_mb'])} separate upstream binaries built the same way: **{c['multicall_ratio']:.0%}** of the sum. "
              f"Warm `make components`: {c['warm_build_s']} s; build seconds recorded when each cache entry was "
              f"made: {c['build_s_when_cache_was_made']}.", ""]
    for mode in ("shared", "separate"):
        s = r.get("server", {}).get(mode)
        if not s:
            continue
        L += [f"**`k4s server --control-plane-only`** on the host, component-processes: {mode}: apiserver ready "
              f"after {s['apiserver_ready_s']} s. Start (s after launch) / ready-in (s): "
              + ", ".join(f"{n} {s['component_start_s'][n]}/{s['component_ready_in_s'][n]}" for n in s["component_start_s"]),
              "", f"Idle memory by process, PSS (RSS) in MiB, total PSS **{s.get('idle_pss_total_mib')}**: "
              + ", ".join(f"{k} {s['idle_pss_mib'].get(k, '?')} ({v})" for k, v in s["idle_rss_mib"].items()), ""]
    if "appliance" in r:
        a = r["appliance"]
        b = a["boot_1024"]
        L += ["**Appliance in QEMU** (TCG, 2 vCPU, 1 GiB; seconds since kernel start):", "",
              "| stage | s |", "|---|---|"] + [f"| {k} | {v} |" for k, v in b.get("timeline_s", {}).items()] + [
              "", f"Wall clock from QEMU start to node Ready: {b.get('ready_wall_s')} s. Memory used at idle "
              f"(MemTotal - MemAvailable, 90 s after Ready): {b.get('idle_mem_used_mib')} MiB"
              + (" (" + ", ".join(f"{k.removesuffix('_mib')} {v}" for k, v in b.get("idle_mem_mib", {}).items()
                                 if k not in ("mem_used_mib", "mem_total_mib")) + " MiB)"
                 if b.get("idle_mem_mib") else "") + ".", ""]
        fits = [(f"{m}", a[f"boot_{m}"]) for m in SMALL if f"boot_{m}" in a]
        fits += [("512, `k4s.zram=0` (baseline)", a["boot_512_nozram"])] if "boot_512_nozram" in a else []
        L += [f"Small machines (smallest -m that reached Ready: **{a['smallest_ready_mib']} MiB**; the target is "
              "Ready at 512 with 100 MiB available at idle):", "",
              "| -m MiB | node Ready (wall s) | CoreDNS Ready (s) | available in the 120 s after Ready, median (least) | "
              "swapped to zram (RAM it takes) |", "|---|---|---|---|---|"]
        for name, f in fits:
            avail = (f"{f['idle_available_mib']} ({f.get('idle_available_min_mib', '-')}) of {f['mem_total_mib']} MiB"
                     if "idle_available_mib" in f else "-")
            swap = f"{f['swapped_mib']} MiB ({f['zram_mib']} MiB)" if "swapped_mib" in f else "-"
            L.append(f"| {name} | {f['ready_wall_s'] if f.get('ready') else 'not Ready: ' + str(f.get('error'))} "
                     f"| {f.get('coredns_ready_s') or '-'} | {avail} | {swap} |")
        L.append("")
        sep = a.get("boot_1024_separate", {})
        if sep.get("idle_mem_used_mib"):
            L += [f"Baseline in the same run, `k4s.component-processes=separate` (one process per component): "
                  f"node Ready {sep.get('timeline_s', {}).get('node Ready')} s, idle "
                  f"{sep['idle_mem_used_mib']} MiB (anon {sep['idle_mem_mib'].get('anon_mib')} MiB) vs "
                  f"{b.get('idle_mem_used_mib')} MiB shared: "
                  f"**{b.get('idle_mem_used_mib', 0) / sep['idle_mem_used_mib']:.2f}x**.", ""]
        d = r.get("datadisk")
        if d and d["first"].get("ready"):
            def mem(x: dict) -> str:
                m = x.get("idle_mem_mib") or {}
                return f"{x.get('idle_mem_used_mib')} MiB (shmem {m.get('shmem_mib')})"
            L += ["With a data disk (`k4s.data=LABEL=K4SDATA`, same run, 1 GiB):", "",
                  "| boot | node Ready s | wall s | used at idle |", "|---|---|---|---|",
                  f"| RAM only (above) | {b.get('timeline_s', {}).get('node Ready')} | {b.get('ready_wall_s')} | "
                  f"{b.get('idle_mem_used_mib')} MiB (shmem {b.get('idle_mem_mib', {}).get('shmem_mib')}) |",
                  f"| blank disk, formatted at boot | {d['node_ready_s']['first']} | {d['first'].get('ready_wall_s')} | "
                  f"{mem(d['first'])} |",
                  f"| again, on the state it left | {d['node_ready_s']['again']} | {d['again'].get('ready_wall_s')} | "
                  f"{mem(d['again'])} |", "",
                  f"The qcow2 holds {d['disk_mib_used']} MiB after the two boots.", ""]
        L += [
              "| part | unpacked MB | in the initramfs MB |", "|---|---|---|"]
        L += [f"| {k} | {v['unpacked_mb']} | {v['compressed_mb']} |" for k, v in a["image_parts"].items()]
        L += [""]
    if "fleet" in r:
        f = r["fleet"]
        L += ["**A fleet of two** (same run; a server and a worker that joins it with `k4s token create`'s line, "
              "on a QEMU lan; TCG, the two VMs share the 2 host cores):", "",
              f"Worker from QEMU start to node Ready: **{f.get('worker_ready_wall_s')} s** (node Ready "
              f"{f.get('worker_ready_s')} s after its kernel started; the join itself is part of it). Worker memory used "
              f"at idle: **{f.get('worker_idle_mem_used_mib')} MiB**"
              + (" (" + ", ".join(f"{k.removesuffix('_mib')} {v}" for k, v in f.get("worker_idle_mem_mib", {}).items()
                                  if k not in ("mem_used_mib", "mem_total_mib")) + " MiB)"
                 if f.get("worker_idle_mem_mib") else "") + ".", "",
              "| pod to pod | round trip ms | throughput MB/s |", "|---|---|---|",
              f"| same node (bridge) | {f.get('same_node_rtt_ms')} | {f.get('same_node_mb_s')} |",
              f"| across nodes (flannel vxlan over the lan) | {f.get('cross_node_rtt_ms')} | {f.get('cross_node_mb_s')} |",
              ""] + ([f"Fleet bench error: {f['error']}", ""] if f.get("error") else [])
    if "netboot" in r:
        n, direct = r["netboot"], r.get("appliance", {}).get("boot_1024", {}).get("ready_wall_s")
        L += ["**Network and firmware boot** (same run; wall clock from QEMU start to node Ready):", "",
              "| boot path | s to Ready |", "|---|---|",
              f"| direct (`-kernel`/`-initrd`) | {direct} |",
              f"| PXE: iPXE ROM, boot.ipxe over TFTP, kernel + initrds over HTTP | {n['pxe'].get('ready_wall_s')} |",
              f"| LinuxBoot: stage 1 fetches, verifies and kexecs stage 2 | {n['stage1'].get('ready_wall_s')} |", "",
              f"Stage 1: kernel {n['stage1_kernel_mib']} MiB + initramfs {n['stage1_initramfs_mib']} MiB = "
              f"**{n['stage1_total_mib']} MiB** of a 16 MiB flash part; its biggest parts (MB, before xz): "
              + ", ".join(f"{k} {v}" for k, v in n["stage1_biggest_mb"].items()) + ". "
              f"Fetch + verify (sha256 while streaming, Ed25519 manifest): {n.get('qemu_fetch_verify_s_per_100mb')} s "
              f"per 100 MB in QEMU (TCG, user network), {n['host_fetch_verify_s_per_100mb']} s per 100 MB on the "
              "host over loopback.", ""]
    return "\n".join(L)


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    s = readme.read_text()
    s = re.sub(r"<!-- bench:begin -->.*<!-- bench:end -->", f"<!-- bench:begin -->\n{text}\n<!-- bench:end -->",
               s, flags=re.S)
    readme.write_text(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-boot", action="store_true")
    ap.add_argument("--skip-components", action="store_true")
    ap.add_argument("--only", choices=["fleet", "netboot", "appliance", "datadisk"],
                    help="measure one section again, keeping the others from the last results.json")
    args = ap.parse_args()
    BENCH.mkdir(parents=True, exist_ok=True)
    path = RESULTS
    r = json.loads(path.read_text()) if path.exists() else {}
    r["date"] = time.strftime("%Y-%m-%d")
    r["machine"] = f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, " \
                   f"{platform.platform()}"
    if args.only:
        print(f"bench: {args.only} only", flush=True)
        r[args.only] = {"fleet": bench_fleet, "netboot": bench_netboot, "appliance": bench_appliance,
                        "datadisk": bench_datadisk}[args.only]()
        path.write_text(json.dumps(r, indent=2) + "\n")
        update_readme(markdown(r))
        print(markdown(r))
        return 0
    print("bench: start-up", flush=True)
    r["startup"] = bench_startup()
    r["bundle"] = bench_bundle()
    if not args.skip_components:
        print("bench: components", flush=True)
        r["components"] = bench_components()
    print("bench: k4s server", flush=True)
    r["server"] = {mode: bench_server(mode) for mode in ("shared", "separate")}
    if not args.skip_boot:
        print("bench: appliance boots (several minutes under TCG)", flush=True)
        r["appliance"] = bench_appliance()
        print("bench: a data disk (two boots)", flush=True)
        r["datadisk"] = bench_datadisk()
        print("bench: netboot (PXE and LinuxBoot boots)", flush=True)
        r["netboot"] = bench_netboot()
        print("bench: a fleet of two (server and worker)", flush=True)
        r["fleet"] = bench_fleet()
    path.write_text(json.dumps(r, indent=2) + "\n")
    update_readme(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
