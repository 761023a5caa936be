"""renice reaches every thread: on Linux nice is per thread."""

import os
import subprocess
import sys

from k4s.sys.process import renice

CHILD = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); print(flush=True); time.sleep(30)"


def test_renice_sets_every_thread() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # both threads run
        renice(child.pid, 7)
        tids = os.listdir(f"/proc/{child.pid}/task")
        assert len(tids) >= 2
        assert {os.getpriority(os.PRIO_PROCESS, int(t)) for t in tids} == {7}
    finally:
        child.kill()
        child.wait()


def test_renice_of_a_gone_process_is_quiet() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    renice(child.pid, 7)  # no error: the import task must not fail over a process that exited
