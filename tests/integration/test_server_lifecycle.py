"""`k4s server` lifecycle on the host: clean stop, and one clear line for each bad input."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time

import psutil

from tests.integration.conftest import start_server


def test_sigterm_stops_everything_within_deadline(tmp_path) -> None:
    s = start_server(tmp_path, "--control-plane-only")
    try:
        s.wait_ready()
        comps = s.status()["components"]
        pids = {c["pid"] for c in comps.values() if c["pid"]}
        # one process: the apiserver's, with etcd, the controller-manager and the scheduler in it
        assert pids == {comps["kube-apiserver"]["pid"]}
        took = s.stop(timeout=60)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert s.proc.returncode == 0
    assert took < 60
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    log = s.log.read_text()
    for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
        assert f"component={name} event=stopped" in log
    assert log.count("event=stopping") == 4
    # a clean stop: the apiserver finished its graceful shutdown, then etcd closed
    assert 'component=kube-apiserver event=stopped exit="code 0"' in log
    # embedded etcd preallocates 4 MB WAL segments too, not upstream's 64 MB
    wal = list((s.data / "etcd" / "member" / "wal").glob("*.wal"))
    assert wal and {f.stat().st_size for f in wal} == {4_000_000}


def test_separate_processes_stop_in_reverse_order(tmp_path) -> None:
    s = start_server(tmp_path, "--control-plane-only", "--set", "component-processes=separate")
    try:
        s.wait_ready()
        assert len({c["pid"] for c in s.status()["components"].values() if c["pid"]}) == 4
        s.stop(timeout=60)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert s.proc.returncode == 0
    log = s.log.read_text()
    # the apiserver stops before etcd, the scheduler before the apiserver
    assert log.index("component=kube-scheduler event=stopping") < log.index("component=kube-apiserver event=stopping")
    assert log.index("component=kube-apiserver event=stopped") < log.index("component=etcd event=stopping")


def test_elected_controllers_run_apart_and_a_lost_lease_restarts_only_them(tmp_path) -> None:
    """cluster-init: the controller-manager and the scheduler hold Leases, in a process of their
    own. When another holder takes the lease (as a partitioned leader finds on its return),
    upstream ends that process; the supervisor starts it again, and the apiserver and etcd, in
    the process a lost lease must never end, run on."""
    s = start_server(tmp_path, "--control-plane-only", "--set", "cluster-init=1")
    try:
        before = s.wait_ready()
        pid = {n: c["pid"] for n, c in before.items()}
        assert pid["kube-scheduler"] == pid["kube-controller-manager"] != pid["kube-apiserver"] == pid["etcd"]
        for lease in ("kube-controller-manager", "kube-scheduler"):
            spec = json.loads(s.kubectl("get", "lease", "-n", "kube-system", lease, "-o", "json").stdout)["spec"]
            assert spec["holderIdentity"] and spec["leaseDurationSeconds"] == 30, spec
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        s.kubectl("patch", "lease", "-n", "kube-system", "kube-controller-manager", "--type=merge", "-p",
                  json.dumps({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 3600}}))
        end = time.monotonic() + 90  # the renew deadline (20 s), then a restart
        while (st := s.status().get("components", {}))["kube-controller-manager"]["restarts"] == 0:
            assert time.monotonic() < end, f"the lost lease did not restart the controllers: {st}"
            time.sleep(0.5)
        after = s.wait_ready(60)
        assert after["kube-scheduler"]["pid"] == after["kube-controller-manager"]["pid"] != pid["kube-controller-manager"]
        for name in ("kube-apiserver", "etcd"):
            assert after[name]["pid"] == pid[name] and after[name]["restarts"] == 0, after
        s.stop(timeout=60)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    log = s.log.read_text()
    assert "component=kube-controller-manager event=exited" in log
    assert "component=kube-apiserver event=exited" not in log


def _fails_with(tmp_path, *extra: str, env_bin: str | None = None, timeout: float = 180) -> str:
    s = start_server(tmp_path, *extra)
    try:
        s.proc.wait(timeout)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert s.proc.returncode == 1
    errors = [ln for ln in s.log.read_text().splitlines() if ln.startswith("k4s server: error:")]
    assert len(errors) == 1 and "(hint: " in errors[0]
    return errors[0]


def test_missing_component_binary(tmp_path) -> None:
    empty = tmp_path / "nobin"
    empty.mkdir()
    line = _fails_with(tmp_path, "--control-plane-only", "--set", f"bin-dir={empty}")
    assert f"component binary {empty}/etcd is missing" in line


def test_port_in_use(tmp_path) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 2379))
        blocker.listen()
        line = _fails_with(tmp_path, "--control-plane-only")
    assert "port 2379 (etcd) is already in use by pid" in line


def test_host_without_cgroup_v2(tmp_path) -> None:
    from k4s.cluster.preflight import cgroup2_mounted

    hybrid = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    assert not cgroup2_mounted(hybrid)
    assert cgroup2_mounted("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n")
    if cgroup2_mounted():
        return  # this host has cgroup v2: the node part would start (the e2e tier runs it)
    line = _fails_with(tmp_path)
    assert "cgroup v2 is not mounted" in line and "--control-plane-only" in line


def test_datastore_that_does_not_come_up_stops_the_rest(tmp_path) -> None:
    # An etcd data dir it cannot use: a corrupt backend database.
    snap = tmp_path / "data" / "etcd" / "member" / "snap"
    snap.mkdir(parents=True)
    (snap / "db").write_bytes(b"this is not a bolt database" * 100)
    (tmp_path / "data" / "etcd" / "member" / "wal").mkdir()
    line = _fails_with(tmp_path, "--control-plane-only")
    # etcd runs in the apiserver's process: the error names both, and etcd's panic
    assert "kube-apiserver exited 5 times before it became ready" in line
    assert "in its process etcd, kube-controller-manager, kube-scheduler never became ready" in line
    assert "last log: panic: failed to open database" in line
    assert not any("kube-apiserver" in p.name() for p in psutil.process_iter(["name"]))
