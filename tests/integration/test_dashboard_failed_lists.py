"""rq's FailedJobRegistry and dockrq's ``failed`` outcomes are two lists on the dashboard.

rq-dashboard's ``failed`` registry is rq's FailedJobRegistry (in dockrq: jobs a worker refused,
such as a job that is not ``worker.jobs.execute``, and executions rq gave up on, which the
reaper settles as ``lost``); dockrq's executions whose container exited non-zero are the
pseudo-registry ``failed-outcome``. Before, both were ``/view/jobs/QUEUE/failed/...``: rq's
registry could not be listed, its count on the queues page opened dockrq's list, and Empty on
``failed`` emptied dockrq's list. scripts/dashboard.sh over HTTP, real Redis, a real worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from schemas import Keys

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


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
    while True:
        try:
            urllib.request.urlopen(f"{base}/0/data/queues.json", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rq-dashboard did not come up:\n" + log_path.read_text())
            time.sleep(0.2)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def _open(url: str, method: str = "GET") -> bytes:
    return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10).read()


def test_rq_failed_and_dockrq_failed_outcomes_are_separate_lists(
    dashboard, spawn_worker, producer, redis_client, test_image
):
    spawn_worker()
    queue_name = spawn_worker.queue
    rq_queue = Queue(queue_name, connection=redis_client, serializer=JSONSerializer)
    failed_registry = rq_queue.failed_job_registry

    def refused_rq_job() -> str:
        """A job that is not a dockrq execution: the worker refuses it and rq records it failed."""
        job = rq_queue.enqueue_call("os.getcwd")
        deadline = time.monotonic() + 60
        while job.id not in failed_registry.get_job_ids(cleanup=False):
            assert time.monotonic() < deadline, "the worker never refused the foreign job"
            time.sleep(0.1)
        return job.id

    def listed(registry: str) -> tuple[list[str], int]:
        """(ids on the list's first page, its total: the page count at one job a page)."""
        rows = json.loads(_open(f"{dashboard}/0/data/jobs/{queue_name}/{registry}/8/dsc/1.json"))["jobs"]
        total = json.loads(_open(f"{dashboard}/0/data/jobs/{queue_name}/{registry}/1/dsc/1.json"))["pagination"]["num_pages"]
        return [r["id"] for r in rows], total

    def empty(registry: str) -> dict:
        return json.loads(_open(f"{dashboard}/queue/{queue_name}/{registry}/empty", "POST"))

    foreign = refused_rq_job()
    exited = producer.submit({"engine": {"image": test_image, "cmd": ["sh", "-c", "exit 3"]}})
    assert producer.wait(exited, timeout=60).status.value == "failed"

    # Each list shows only its own, with its own count.
    assert listed("failed") == ([foreign], 1)
    assert listed("failed-outcome") == ([exited], 1)
    row = json.loads(_open(f"{dashboard}/0/data/queues.json"))["queues"]
    row = next(q for q in row if q["name"] == queue_name)
    assert row["failed_job_registry_count"] == 1 and "/failed/" in row["failed_url"]
    dockrq_failed = next(s for s in row["dockrq"]["statuses"] if s["status"] == "failed")
    assert dockrq_failed["count"] == 1 and "/failed-outcome/" in dockrq_failed["url"]
    assert json.loads(_open(f"{dashboard}{dockrq_failed['url'].replace('/view/', '/data/')}.json"))["jobs"][0]["id"] == exited

    # The page's buttons act on the list shown: Empty posts to that list; Requeue All (rq's
    # failed registry) only on rq's failed list.
    rq_page = _open(f"{dashboard}/0/view/jobs/{queue_name}/failed/8/dsc/1").decode()
    outcome_page = _open(f"{dashboard}/0/view/jobs/{queue_name}/failed-outcome/8/dsc/1").decode()
    assert f"/queue/{queue_name}/failed/empty" in rq_page and 'id="requeue-all-btn"' in rq_page
    assert f"/queue/{queue_name}/failed-outcome/empty" in outcome_page and 'id="requeue-all-btn"' not in outcome_page

    # Empty on rq's failed registry: the refused job goes (and an id whose job is gone); the failed
    # execution is untouched.
    redis_client.zadd(failed_registry.key, {f"gone-{foreign}": time.time() + 600})
    assert empty("failed")["status"] == "OK"
    assert not Job.exists(foreign, connection=redis_client)
    assert failed_registry.get_job_count(cleanup=False) == 0
    assert Job.exists(exited, connection=redis_client)
    assert listed("failed") == ([], 0) and listed("failed-outcome") == ([exited], 1)

    # Empty on dockrq's failed outcomes: the execution's rq job goes (its outcome stays, so it is
    # still listed from it); rq's failed registry is untouched.
    foreign = refused_rq_job()
    assert empty("failed-outcome")["status"] == "OK"
    assert not Job.exists(exited, connection=redis_client)
    assert producer.wait(exited, timeout=5).status.value == "failed"
    assert redis_client.llen(Keys(spawn_worker.prefix).outcome(exited)) == 1
    assert Job.exists(foreign, connection=redis_client) and foreign in failed_registry.get_job_ids(cleanup=False)
    assert listed("failed") == ([foreign], 1) and listed("failed-outcome") == ([exited], 1)
