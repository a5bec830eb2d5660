"""A foreign rq job (``os.system`` enqueued with rq straight on a dockrq queue) is refused
in one log line naming the job and its function, not rq's ERROR traceback; nothing
runs and the job ends in rq's failed registry as before. Plain workers and pool
members, text and JSON log formats."""

from __future__ import annotations

import json

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from polling import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("pool", [False, True], ids=["plain", "pool"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_foreign_job_is_refused_in_one_line(spawn_worker, redis_client, unique, tmp_path, pool, log_format):
    extra = ["--pool", "2"] if pool else []
    worker = spawn_worker(*extra, ready=False, env={"DOCKRQ_LOG_FORMAT": log_format})
    spawn_worker.ready(2 if pool else 1, [worker])
    marker = tmp_path / "ran"
    queue = Queue(spawn_worker.queue, connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue("os.system", f"touch {marker}", job_id=f"foreign-{unique}")

    def failed() -> bool:
        return Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer).get_status() == JobStatus.FAILED

    wait_until(failed, 30, "the foreign job failed")
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert "RefusedJob" in (Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer).exc_info or "")
    assert not marker.exists()

    wait_until(lambda: f"job {job.id} " in worker.output(), 10, "the refusal logged")
    output = worker.output()
    assert "Traceback" not in output, output
    if log_format == "json":
        records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        about = [r for r in records if job.id in r["message"] and "refused" in r["message"]]
        assert len(about) == 1, output
        (line,) = about
        assert line["level"] == "WARNING" and "exc_info" not in line and line["execution_id"] == job.id
        assert not [r for r in records if r.get("exc_info") or r["level"] in ("ERROR", "CRITICAL")], output
        message = line["message"]
    else:
        about = [line for line in output.splitlines() if job.id in line and "refused" in line]
        assert len(about) == 1, output
        (message,) = about
        assert " WARNING " in message and " ERROR " not in output, output
    assert f"job {job.id} (function 'os.system') refused, nothing run: " in message, message
