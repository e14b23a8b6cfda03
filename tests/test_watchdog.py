"""cluster/watchdog.py on its own (no Ray): a SIGKILLed driver's descendants die, nothing else does.

The fake driver starts the watchdog and a child that starts a grandchild and then exits, so the grandchild is
orphaned the way Ray's agents are when the raylet dies with the driver. The end-to-end check with a real local
Ray cluster is `tests/test_faults.py::test_sigkilled_driver_takes_its_local_cluster_down`.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from cluster.watchdog import POLL_S
from tests.conftest import REPO_ROOT

CHILD = (
    "import subprocess, sys, time\n"
    "grandchild = subprocess.Popen(['sleep', '300'])\n"
    "print(grandchild.pid, flush=True)\n"
    f"time.sleep({4 * POLL_S})  # the watchdog records the grandchild while its parent still lives\n"
)
DRIVER = (
    "import subprocess, sys, time\n"
    "from cluster.watchdog import start_watchdog\n"
    "watchdog = start_watchdog()\n"
    "assert start_watchdog() is watchdog  # one per driver\n"
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE, text=True)\n"
    "print(watchdog.pid, child.pid, child.stdout.readline().strip(), flush=True)\n"
    "child.wait()\n"
    "print('child gone', flush=True)\n"
    "time.sleep(300)\n"
)


def test_watchdog_kills_the_orphans_of_a_sigkilled_driver_and_nothing_else() -> None:
    bystander = subprocess.Popen(["sleep", "300"])  # not the driver's descendant: must survive
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout is not None
        watchdog_pid, child_pid, grandchild_pid = (int(pid) for pid in driver.stdout.readline().split())
        assert driver.stdout.readline().strip() == "child gone"
        grandchild = psutil.Process(grandchild_pid)
        assert grandchild.ppid() != child_pid and grandchild.is_running()  # orphaned, as Ray's agents are
        watchdog = psutil.Process(watchdog_pid)
        assert watchdog.pid in {p.pid for p in psutil.Process(driver.pid).children()}

        driver.kill()
        _, stderr = driver.communicate(timeout=30)  # the watchdog holds the driver's stderr until it exits
        _, alive = psutil.wait_procs([grandchild, watchdog], timeout=15)
        assert not alive, alive
        assert "killed 1 leftover process" in stderr, stderr
        time.sleep(POLL_S)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        if driver.poll() is None:
            driver.kill()
