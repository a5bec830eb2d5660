"""rq-dashboard, started by scripts/dashboard.sh, lists dockrq's jobs from its JSON endpoints."""

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
from rq.serializers import JSONSerializer

from schemas import JOB_FUNCTION, Keys, Outcome

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "dashboard-secret-value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(redis_url, tmp_path):
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "dashboard.sh")],
        env={**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_DASHBOARD_PORT": str(port)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/data/queues.json", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rq-dashboard did not come up:\n" + (tmp_path / "dashboard.log").read_text())
            time.sleep(0.2)

    def get(path: str):
        try:
            return json.loads(urllib.request.urlopen(f"{base}{path}", timeout=10).read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{path}: {exc}\n" + (tmp_path / "dashboard.log").read_text()[-3000:])

    yield get
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)
    log.close()


def test_dashboard_json_endpoints_list_dockrq_jobs(dashboard, spawn_worker, redis_client, test_image, unique):
    spawn_worker()
    queue = Queue(spawn_worker.queue, connection=redis_client, serializer=JSONSerializer)
    keys = Keys(spawn_worker.prefix)
    ok_id, long_id = f"dash-ok-{unique}", f"dash-long-{unique}"  # rq job ids are global to the database

    def submit(eid, *cmd):
        queue.enqueue_call(
            JOB_FUNCTION,
            args=({"execution_id": eid, "engine": {"image": test_image, "cmd": list(cmd), "env": {"TOKEN": SECRET}}},),
            job_id=eid, timeout=-1, description=f"docker run -e TOKEN=*** {test_image} {' '.join(cmd)}",
            meta={"execution_id": eid, "image": test_image, "status": "queued"},
        )

    submit(ok_id, "true")
    key = keys.outcome(ok_id)
    assert Outcome.model_validate_json(redis_client.blmove(key, key, 30, "RIGHT", "LEFT")).status.value == "succeeded"

    queues = {q["name"]: q for q in dashboard("/data/queues.json")["queues"]}
    assert spawn_worker.queue in queues
    finished = dashboard(f"/data/jobs/{spawn_worker.queue}/finished/10/asc/1.json")["jobs"]
    assert [j["id"] for j in finished] == [ok_id]
    assert finished[0]["description"].startswith("docker run -e TOKEN=***")
    job = dashboard(f"/data/job/{ok_id}.json")
    meta = json.loads(job["metadata"])
    assert (job["status"], meta["status"], meta["image"]) == ("finished", "succeeded", test_image)
    assert meta["worker"].startswith(spawn_worker.executor_id) and meta["container_id"]
    workers = dashboard("/data/workers.json")["workers"]
    assert [w["current_job"] for w in workers if w["queues"] == [spawn_worker.queue]] == ["idle"]

    submit(long_id, "sleep", "30")
    deadline = time.monotonic() + 20
    while json.loads(dashboard(f"/data/job/{long_id}.json")["metadata"])["status"] != "running":
        assert time.monotonic() < deadline, "the long job never showed as running"
        time.sleep(0.2)
    assert dashboard(f"/data/job/{long_id}.json")["status"] == "started"
    started = dashboard(f"/data/jobs/{spawn_worker.queue}/started/10/asc/1.json")["jobs"]
    assert [j["id"] for j in started] == [long_id]
    # rq-dashboard 0.9 alone answers 500 here (it reads busy workers' jobs with pickle)
    busy = [w for w in dashboard("/data/workers.json")["workers"] if w["queues"] == [spawn_worker.queue]]
    assert [(w["state"], w["current_job"]["job_id"]) for w in busy] == [("busy", long_id)]
    assert busy[0]["current_job"]["call_string"] == busy[0]["current_job"]["description"]
    for path in ("/data/queues.json", f"/data/jobs/{spawn_worker.queue}/finished/10/asc/1.json",
                 f"/data/jobs/{spawn_worker.queue}/started/10/asc/1.json", "/data/workers.json",
                 f"/data/job/{ok_id}.json", f"/data/job/{long_id}.json"):
        assert SECRET not in json.dumps(dashboard(path)), path
