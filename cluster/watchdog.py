"""A local Ray cluster dies with its driver, even with a SIGKILLed one.

Ray starts a local cluster's gcs_server and raylet so that they die with the driver, but not what the raylet
starts: after a `kill -9` of the driver, Ray's DashboardAgent and RuntimeEnvAgent were still running minutes later.
So the driver starts this watchdog (`start_watchdog`, before `ray.init`) in a session of its own, where neither a
Ctrl-C nor a kill of the driver's process group reaches it. While the driver lives, the watchdog records the
driver's descendants every `POLL_S`; once the driver is gone it SIGKILLs each recorded process still alive, and
whatever those started since, then exits.

Only descendants of this driver are ever recorded, and a process is recognised by its pid and start time, so a pid
that an unrelated process has reused since is never touched. Nothing is looked up by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
"""How often the driver's process tree is recorded (and its liveness checked)."""

KILL_WAIT_S = 10.0
"""How long the watchdog waits for the processes it killed to be gone before it reports stragglers."""


_watchdog: subprocess.Popen | None = None


def start_watchdog() -> subprocess.Popen:
    """Start the watchdog of this process (the driver); it exits on its own shortly after the driver does.

    One per driver: it watches all of the driver's descendants, so a driver that starts several local clusters
    one after the other (bench/step_profile.py) keeps the first one.
    """
    global _watchdog
    if _watchdog is None or _watchdog.poll() is not None:
        _watchdog = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    return _watchdog


def record_until_gone(driver_pid: int) -> set[psutil.Process]:
    """Every descendant of the driver (but this watchdog) seen while it lived; returns once the driver is gone.

    The watchdog is the driver's child, so the driver is gone when the watchdog's parent changes: the kernel
    reparents it at once, even while the dead driver waits as a zombie for its own parent to reap it.
    """
    driver = psutil.Process(driver_pid)
    seen: set[psutil.Process] = set()
    while os.getppid() == driver_pid:
        try:
            seen.update(p for p in driver.children(recursive=True) if p.pid != os.getpid())
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    return seen


def kill_leftovers(seen: set[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL the recorded processes still alive and their current descendants; returns those it killed."""
    victims: set[psutil.Process] = set()
    for process in seen:
        try:
            if process.is_running():  # same pid and start time: still the process that was recorded
                victims.add(process)
                victims.update(process.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    killed = []
    for process in victims:
        try:
            process.kill()
            killed.append(process)
        except psutil.NoSuchProcess:
            continue
    return killed


def main(argv: list[str]) -> int:
    [driver_pid] = [int(arg) for arg in argv]
    seen = record_until_gone(driver_pid)
    killed = kill_leftovers(seen)
    _, alive = psutil.wait_procs(killed, timeout=KILL_WAIT_S)
    if killed:
        print(
            f"watchdog: driver pid {driver_pid} is gone; killed {len(killed)} leftover process(es) of its local "
            f"Ray cluster",
            file=sys.stderr,
        )
    if alive:
        print(f"watchdog: still alive after SIGKILL: {sorted(p.pid for p in alive)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
