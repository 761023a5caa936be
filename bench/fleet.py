"""A fleet of two (k4s.host.fleet): a server and a worker that joins it with `k4s token create`'s
join segment on a QEMU lan: the worker's boot to Ready and idle memory; pod-to-pod round trip and
throughput across nodes next to the same node."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import BIN, INITRD, KERNEL, mem_detail, mem_fields

TITLE = "a fleet of two (server and worker)"
BOOTS = True
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
WORKER_MAC = "52:54:00:00:77:02"


def measure() -> dict:
    """This image's fleet; with BENCH_BASELINE (an earlier commit's initramfs) that one's too,
    first, in the same run."""
    baseline = os.environ.get("BENCH_BASELINE", "")
    out = {"baseline": fleet_of_two(Path(baseline)) | {"image": baseline}} if Path(baseline).is_file() else {}
    return fleet_of_two(INITRD) | out


def fleet_of_two(initrd: Path) -> dict:
    from k4s import events, log
    from k4s.host import fleet

    tmp = Path(tempfile.mkdtemp())
    port = 17790
    server = fleet.server(tmp / "server", KERNEL, initrd, (port,), port=16544)
    out: dict = {}
    try:
        with server.booted():
            server.write_kubeconfig()
            segment = tmp / "worker.join"
            fleet.token_create(server.kubeconfig, "--node", fleet.node_name(WORKER_MAC), "--segment", str(segment))
            worker = fleet.worker(tmp / "worker", KERNEL, initrd, port, WORKER_MAC, "10.77.0.2", segment)
            t0 = time.monotonic()
            with worker.booted(timeout=600) as w:
                out["worker_ready_wall_s"] = round(time.monotonic() - t0, 1)
                out["worker_ready_s"] = w.reached["t"]
                out |= pod_network(server.kubeconfig, w.node)
                time.sleep(60)  # the worker idle, then its last stats line
                stats = events.STATS.all(log.read_events(worker.events))
                if stats:
                    out["worker_idle_mem_used_mib"] = int(stats[-1]["mem_used_mib"])
                    out["worker_idle_mem_mib"] = mem_fields(stats[-1])
    except Exception as e:  # noqa: BLE001 - a failed bench is reported, not raised
        out["error"] = str(e)[:500]
    return out


def pod_network(kubeconfig: Path, worker: str) -> dict:
    """Round trip and throughput from a pod on the server to one beside it and one on the worker."""
    def kubectl(*args: str, stdin: str | None = None) -> str:
        return subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, check=True, timeout=300).stdout

    out: dict = {}
    server_node = next(n for n in kubectl("get", "nodes", "-o", "name").split() if not n.endswith(worker))
    server_node = server_node.split("/", 1)[1]
    pods = {"a": server_node, "b": server_node, "c": worker}  # a sends to b (same node) and to c (across)
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
    return out


def render(r: dict) -> list[str]:
    f = r["fleet"]
    return ["**A fleet of two** (same run; a server and a worker that joins it with `k4s token create`'s "
            "join segment, on a QEMU lan; TCG, the two VMs share the 2 host cores):", "",
            f"Worker from QEMU start to node Ready: **{f.get('worker_ready_wall_s')} s** (node Ready "
            f"{f.get('worker_ready_s')} s after its kernel started; the join itself is part of it). Worker memory used "
            f"at idle: **{f.get('worker_idle_mem_used_mib')} MiB**" + mem_detail(f.get("worker_idle_mem_mib", {})) + ".",
            "", "| pod to pod | round trip ms | throughput MB/s |", "|---|---|---|",
            f"| same node (bridge) | {f.get('same_node_rtt_ms')} | {f.get('same_node_mb_s')} |",
            f"| across nodes (flannel vxlan over the lan) | {f.get('cross_node_rtt_ms')} | {f.get('cross_node_mb_s')} |",
            ""] + ([f"Fleet bench error: {f['error']}", ""] if f.get("error") else []) + (
            [f"The baseline image ({Path(b['image']).name}, {b.get('run', 'the same run')}): worker Ready "
             f"{b.get('worker_ready_wall_s')} "
             f"s from QEMU start, idle {b.get('worker_idle_mem_used_mib')} MiB"
             + mem_detail(b.get("worker_idle_mem_mib", {})) + "; across nodes "
             f"{b.get('cross_node_rtt_ms')} ms, {b.get('cross_node_mb_s')} MB/s.", ""]
            if (b := f.get("baseline")) else [])
