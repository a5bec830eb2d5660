"""An execution whose container will never be created does not keep its input archive
(``P:exec:ID:inputs``) for the retention: the outcome's write deletes it (WRITE_OUTCOME_LUA's
KEYS[3]), for a worker's rejection, a cancel while queued and the dashboard's Delete and Empty.
Real dockrq-worker, Redis, dockerd and rq-dashboard (scripts/dashboard.sh)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from schemas import ExecutionStatus, Keys

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def req(image, name, script):
    return {"execution_id": f"{name}-{uuid.uuid4().hex[:8]}", "engine": {"image": image, "cmd": ["sh", "-c", script]}}


def test_a_worker_rejection_deletes_the_input_archive_a_run_keeps_it(producer, spawn_worker, test_image, redis_client):
    spawn_worker(env={"DOCKRQ_MAX_INPUT_BYTES": "1k"})
    keys = Keys(spawn_worker.prefix)
    over = producer.submit(req(test_image, "over", "echo ran"), inputs={"/in/f": b"x" * 2000})
    assert redis_client.exists(keys.inputs(over))  # written before the enqueue
    outcome = producer.wait(over, timeout=60)
    assert (outcome.status, outcome.error.code) == (ExecutionStatus.REJECTED, "policy_violation")
    assert not redis_client.exists(keys.inputs(over))
    ran = producer.submit(req(test_image, "ran", "cat /in/f"), inputs={"/in/f": b"y" * 10})
    assert producer.wait(ran, timeout=60).result.stdout == "y" * 10
    assert 0 < redis_client.ttl(keys.inputs(ran)) <= producer.retention_seconds  # a container ran: kept


def test_a_cancel_while_queued_deletes_the_input_archive(producer, spawn_worker, test_image, redis_client):
    keys = Keys(spawn_worker.prefix)  # no worker started: it stays queued
    eid = producer.submit(req(test_image, "queued", "true"), inputs={"/in/f": b"z"})
    assert redis_client.exists(keys.inputs(eid))
    assert producer.cancel(eid) == "cancelled"
    assert producer.wait(eid, timeout=10).status == ExecutionStatus.CANCELLED
    assert not redis_client.exists(keys.inputs(eid))


@pytest.fixture
def dashboard(redis_url, spawn_worker, tmp_path):
    """scripts/dashboard.sh on this test's prefix and queue; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "dashboard.log"
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "dashboard.sh")],
        env={**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_DASHBOARD_PORT": str(port),
             "DOCKRQ_PREFIX": spawn_worker.prefix, "DOCKRQ_QUEUE": spawn_worker.queue},
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/0/data/queues.json", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("rq-dashboard did not come up:\n" + log_path.read_text())
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def post(url: str) -> dict:
    return json.loads(urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).read())


def test_the_dashboards_delete_and_empty_delete_the_input_archive(
    producer, spawn_worker, dashboard, test_image, redis_client
):
    keys = Keys(spawn_worker.prefix)
    later = [producer.submit(req(test_image, f"later{i}", "true"), inputs={"/in/f": b"w"}, delay=timedelta(hours=1))
             for i in range(3)]
    assert all(redis_client.exists(keys.inputs(eid)) for eid in later)
    assert post(f"{dashboard}/job/{later[0]}/delete")["status"] == "OK"
    assert producer.wait(later[0], timeout=10).status == ExecutionStatus.CANCELLED
    assert not redis_client.exists(keys.inputs(later[0]))
    assert post(f"{dashboard}/queue/{spawn_worker.queue}/scheduled/empty")["status"] == "OK"
    for eid in later[1:]:
        assert producer.wait(eid, timeout=10).status == ExecutionStatus.CANCELLED
        assert not redis_client.exists(keys.inputs(eid))
