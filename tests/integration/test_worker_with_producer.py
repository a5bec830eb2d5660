"""dockrq-worker processes driven by producer.Producer: the two sides of the wire contract agree."""

from __future__ import annotations

import math
import threading
import uuid
import time
from datetime import timedelta

import pytest

from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def req(image, name, *cmd, **fields):
    # rq job ids share one keyspace whatever the prefix: make each test's ids its own
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd)}, **fields}


def test_logs_follow_live_then_outcome(producer, spawn_worker, test_image, docker_client):
    spawn_worker()
    # The container prints 1, then goes on only once the follower has received it (the test
    # then creates /tmp/go in it; after a minute without, it gives up with exit 3): logs that
    # came at the end instead of while it ran would leave nothing running to tell.
    script = (
        "echo 1; i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
        "[ -e /tmp/go ] || exit 3; echo 2; echo 3"
    )
    eid = producer.submit(req(test_image, "follow", "sh", "-c", script))
    seen: list[str] = []
    for entry in producer.logs(eid, follow=True):
        seen.append(entry.data)
        if entry.data == "1\n":
            (running,) = docker_client.containers.list(ignore_removed=True, filters={"label": f"dockrq.execution={eid}"})
            assert running.exec_run(["touch", "/tmp/go"]).exit_code == 0
    assert "".join(seen) == "1\n2\n3\n"
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.exit_code) == (ExecutionStatus.SUCCEEDED, 0)
    assert producer.status(eid).state.value == "succeeded"


def test_producer_cancels_running_and_queued(producer, spawn_worker, test_image, docker_client):
    queued = producer.submit(req(test_image, "never-runs", "echo", "no"))
    producer.cancel(queued)
    assert producer.wait(queued, timeout=5).status == ExecutionStatus.CANCELLED
    worker = spawn_worker()
    running = producer.submit(req(test_image, "runs", "sleep", "300"))
    deadline = time.monotonic() + 30
    while producer.status(running).state.value != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    producer.cancel(running)
    assert producer.wait(running, timeout=10).status == ExecutionStatus.CANCELLED
    assert producer.wait(queued, timeout=1).result is None  # never reached a container
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={worker.executor_id}"})


def test_scheduled_execution_runs_at_its_time(producer, spawn_worker, test_image):
    spawn_worker()
    submitted = time.time()
    eid = producer.submit(req(test_image, "later", "echo", "late"), delay=timedelta(seconds=3))
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED and outcome.result.stdout == "late\n"
    # rq keeps a schedule to the whole second (it drops the fraction) and enqueues the job
    # once that second has come: the container cannot have started before it.
    assert outcome.result.started_at.timestamp() >= math.floor(submitted) + 3


def test_three_waiters_and_a_late_follower(producer, spawn_worker, test_image):
    spawn_worker()
    eid = producer.submit(req(test_image, "shared", "sh", "-c", "seq 1 500; sleep 0.5"))
    got = []
    waiters = [threading.Thread(target=lambda: got.append(producer.wait(eid, timeout=30))) for _ in range(3)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join()
    assert [o.status for o in got] == [ExecutionStatus.SUCCEEDED] * 3
    late = "".join(e.data for e in producer.logs(eid, follow=True))
    assert late == "".join(f"{i}\n" for i in range(1, 501))
