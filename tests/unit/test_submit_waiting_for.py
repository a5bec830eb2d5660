"""An attached submit's notice says what the execution waits for: a dependency, a concurrency
slot, its scheduled time, or a worker (producer/waiting_for.py, producer/progress.py; fakeredis)."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import producer.progress as progress
from producer import Producer
from producer.progress import SubmitProgress
from producer.waiting_for import waiting_for
from schemas import ExecutionResult, ExecutionStatus, Keys, Outcome

KEYS = Keys("p")
ENGINE = {"image": "busybox", "cmd": ["true"]}


@pytest.fixture
def producer(fake_redis):
    return Producer(connection=fake_redis, prefix="p", queue="jobs")


def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_each_wait_is_named(producer, fake_redis):
    dep = producer.submit({"execution_id": "dep-a", "engine": ENGINE})
    assert waiting_for(fake_redis, KEYS, dep, "jobs") == "waiting for a worker on queue jobs"
    child = producer.submit({"execution_id": "child", "engine": ENGINE}, depends_on=[dep])
    assert waiting_for(fake_redis, KEYS, child, "jobs") == "waiting for dependency dep-a to succeed (--depends-on)"
    later = producer.submit({"execution_id": "later", "engine": ENGINE}, delay=timedelta(hours=1))
    assert waiting_for(fake_redis, KEYS, later, "jobs").startswith("scheduled: waiting until ")
    producer.submit({"execution_id": "holder", "engine": ENGINE, "concurrency_key": "gpu", "concurrency_limit": 1})
    limited = producer.submit({"execution_id": "limited", "engine": ENGINE, "concurrency_key": "gpu", "concurrency_limit": 1})
    assert waiting_for(fake_redis, KEYS, limited, "jobs") == (
        "waiting for a concurrency slot: at most 1 with key gpu run at once"
    )


def test_attached_notice_names_the_dependency_then_the_worker(producer, fake_redis, monkeypatch):
    monkeypatch.setattr(progress, "WAITING_RECHECK_SECONDS", 0.05)
    producer.submit({"execution_id": "first", "engine": ENGINE})
    out = io.StringIO()
    request = {"execution_id": "second", "engine": ENGINE}
    shown = SubmitProgress(fake_redis, KEYS, "second", "jobs", stream=out, waiting_after=0.05).start()
    try:
        producer.submit(request, depends_on=["first"])
        _until(lambda: out.getvalue())
        assert out.getvalue() == "dockrq: waiting for dependency first to succeed (--depends-on)\n"
        assert "waiting for a worker" not in out.getvalue()
        # The dependency succeeds and rq releases the dependent onto its queue.
        ok = Outcome.from_result(ExecutionResult(execution_id="first", status=ExecutionStatus.SUCCEEDED, exit_code=0))
        fake_redis.rpush(KEYS.outcome("first"), ok.model_dump_json())
        job = Job.fetch("second", connection=fake_redis, serializer=JSONSerializer)
        job.set_status(JobStatus.QUEUED)  # as rq's release of a deferred job marks it
        _until(lambda: out.getvalue().count("\n") == 2)
    finally:
        shown.close()
    assert out.getvalue().splitlines()[1] == "dockrq: waiting for a worker on queue jobs"
