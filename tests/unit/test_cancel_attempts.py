"""A cancel that comes before a retry's attempt begins reports the attempts that really ran."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer import Producer
from schemas import AttemptRecord, ExecutionResult, ExecutionStatus, Outcome
from worker.execution.retries import _advance


def _failed(eid: str) -> Outcome:
    return Outcome.from_result(ExecutionResult(execution_id=eid, status=ExecutionStatus.FAILED, exit_code=7))


def test_cancel_during_the_backoff_reports_one_attempt(fake_redis):
    producer = Producer(connection=fake_redis, prefix="p")
    eid = producer.submit({
        "engine": {"image": "busybox", "cmd": ["false"]}, "retries": 2, "retry_on": ["failed"], "retry_backoff_seconds": 60,
    })
    job = Job.fetch(eid, connection=fake_redis, serializer=JSONSerializer)
    # What a worker's next_attempt and rq's retry leave: attempt 1 recorded, attempt 2 scheduled.
    _advance(job, 1, _failed(eid), 60)
    job.save_meta()
    producer.rq_queue().schedule_job(job, datetime.now(timezone.utc) + timedelta(seconds=60))
    assert job.get_status() == JobStatus.SCHEDULED and producer.status(eid).attempt == 2
    assert producer.cancel(eid) == "cancelled"
    outcome = producer.wait(eid, timeout=1)
    assert (outcome.status, outcome.attempts) == (ExecutionStatus.CANCELLED, 1)
    assert [(a.attempt, a.status, a.exit_code) for a in outcome.previous_attempts] == [(1, ExecutionStatus.FAILED, 7)]


def test_with_attempts_counts_only_attempts_that_ran():
    previous = [AttemptRecord(attempt=1, status=ExecutionStatus.FAILED, exit_code=7)]
    before_start = Outcome.failure("x", ExecutionStatus.CANCELLED, "cancelled", "cancelled before it started")
    assert before_start.with_attempts(2, previous).attempts == 1  # the worker's cancel before attempt 2 began
    ran = Outcome.from_result(ExecutionResult(execution_id="x", status=ExecutionStatus.CANCELLED, exit_code=143))
    assert ran.with_attempts(2, previous).attempts == 2  # attempt 2 ran and was cancelled
    lost = Outcome.failure("x", ExecutionStatus.LOST, "worker_lost", "gone")
    assert lost.with_attempts(2, previous).attempts == 2  # a lost attempt ran
    assert before_start.with_attempts(1, []).attempts == 1
