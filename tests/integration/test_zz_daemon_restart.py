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

import subprocess
import time

import pytest

from producer import Producer
from schemas import ExecutionStatus
from scripts.faults import FAST_REAP_ENV, docker_up, ensure_dockerd, stop_dockerd

pytestmark = [pytest.mark.integration, pytest.mark.daemon_restart]

FAST = FAST_REAP_ENV  # dead workers noticed in seconds
@pytest.fixture
def restartable_dockerd():
    assert docker_up(), "dockerd must be running (scripts/setup.sh)"
    try:
        yield
    finally:
        ensure_dockerd()  # whatever happened, the machine keeps its daemon


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
        ensure_dockerd()

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
