"""Faults survived: dockerd restarted mid-execution.

The daemon is stopped (``kill``, as an operator or a package upgrade would)
and started again exactly as scripts/setup.sh does. Live-restore is off on
this machine, so the running container dies with it: the execution must end
with ``error``/``daemon_restarted`` (or, had the container survived, be
followed to its end), the worker must serve again once the daemon is back,
and nothing may hang.

This stops every container on the machine: it is marked ``daemon_restart``,
lives in the file that sorts last, and always leaves a running dockerd behind.
Run it alone (``-m daemon_restart``) or at the end of the suite, never in
parallel with other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from producer import Producer
from schemas import ExecutionStatus

pytestmark = [pytest.mark.integration, pytest.mark.daemon_restart]

FAST = {
    "DOCKRQ_HEARTBEAT_SECONDS": "0.5",
    "DOCKRQ_REAP_AFTER_SECONDS": "2",
    "DOCKRQ_REAP_INTERVAL_SECONDS": "0.5",
    "DOCKRQ_ORPHAN_GRACE_SECONDS": "3",
}
DOCKERD_START = "nohup dockerd >/var/log/dockrq-dockerd.log 2>&1 </dev/null &"  # as scripts/setup.sh


def _docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def _dockerd_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stop_dockerd(timeout: float = 60) -> None:
    pids = _dockerd_pids()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        if time.monotonic() > deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)


def start_dockerd(timeout: float = 90) -> None:
    if _docker_up():
        return
    subprocess.run(DOCKERD_START, shell=True, check=True)
    deadline = time.monotonic() + timeout
    while not _docker_up():
        assert time.monotonic() < deadline, "dockerd did not come back; see /var/log/dockrq-dockerd.log"
        time.sleep(0.5)


@pytest.fixture
def restartable_dockerd():
    assert _docker_up(), "dockerd must be running (scripts/setup.sh)"
    try:
        yield
    finally:
        start_dockerd()  # whatever happened, the machine keeps its daemon


def test_dockerd_restart_mid_execution(restartable_dockerd, spawn_worker, redis_url, test_image, unique):
    worker = spawn_worker(env=FAST)
    with Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer:
        eid = producer.submit({
            "execution_id": f"through-dockerd-{unique}",
            "engine": {"image": test_image, "cmd": ["sh", "-c", "echo started; sleep 300"]},
        })
        deadline = time.monotonic() + 30
        while producer.status(eid).state != "running":
            assert time.monotonic() < deadline, "never running"
            time.sleep(0.1)

        stop_dockerd()
        # Submitted while the daemon is away: it waits (in the queue or in its start) and runs once it is back.
        meanwhile = producer.submit({
            "execution_id": f"while-dockerd-down-{unique}", "engine": {"image": test_image, "cmd": ["echo", "later"]},
        })
        time.sleep(2)
        start_dockerd()

        got = producer.wait(eid, timeout=120)
        assert got.status == ExecutionStatus.ERROR, got
        assert got.error.code == "daemon_restarted", got.error
        assert got.result.stdout == "started\n"
        assert worker.popen.poll() is None

        waited = producer.wait(meanwhile, timeout=90)
        assert (waited.status, waited.result.stdout) == (ExecutionStatus.SUCCEEDED, "later\n")

        # The worker (its Docker client and OOM watcher) serves again.
        again = producer.submit({"execution_id": f"after-dockerd-{unique}", "engine": {"image": test_image, "cmd": ["echo", "back"]}})
        after = producer.wait(again, timeout=90)
        assert (after.status, after.result.stdout) == (ExecutionStatus.SUCCEEDED, "back\n")
        # ... and its OOM watcher subscribed to the new daemon's events again.
        oom = producer.submit({
            "execution_id": f"oom-after-dockerd-{unique}",
            "engine": {"image": test_image, "cmd": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]},
            "resources": {"memory": "16m"},
        })
        killed = producer.wait(oom, timeout=90)
        assert (killed.status, killed.result.oom_killed) == (ExecutionStatus.FAILED, True)
        leftovers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=dockrq.executor={spawn_worker.executor_id}"],
            capture_output=True, text=True,
        ).stdout.split()
        assert leftovers == []
