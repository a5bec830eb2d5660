"""Redis failing around a job's rq bookkeeping: the worker settles the job once Redis is back (fakeredis)."""

from __future__ import annotations

import pytest
import redis
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.worker import BaseWorker

from worker.service.worker import DockrqWorker

from test_worker_jobs import FakeExecutor, _job, installed, make_runtime, request  # noqa: F401 - fixtures

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")


def test_job_ended_but_rq_bookkeeping_cut_by_redis_is_finished_once_redis_is_back(fake_redis, installed, monkeypatch):
    installed(FakeExecutor(lines=[("stdout", "hi\n")]))
    job = _job(fake_redis, request("r1"), "r1")
    calls = []
    real = BaseWorker.handle_job_success

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BaseWorker, "handle_job_success", flaky)
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)

    assert len(calls) == 2  # once cut, once after Redis was back
    assert fake_redis.keys("*:exec:r1:outcome")
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert StartedJobRegistry("q", connection=fake_redis).get_job_ids(cleanup=False) == []


def test_job_whose_start_bookkeeping_failed_goes_back_to_its_queue(fake_redis, installed, monkeypatch):
    ex = FakeExecutor()
    installed(ex)
    job = _job(fake_redis, request("r2"), "r2")
    real = DockrqWorker.prepare_execution
    calls = []

    def flaky(self, job):
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Redis went away")
        return real(self, job)

    monkeypatch.setattr(DockrqWorker, "prepare_execution", flaky)
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)

    assert len(calls) == 2  # put back on the queue, then taken and run
    assert ex.started() == ["r2"]
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_bookkeeping_cut_for_good_is_settled_from_the_outcome(fake_redis, installed, monkeypatch):
    installed(FakeExecutor())
    job = _job(fake_redis, request("r3"), "r3")
    real = DockrqWorker.handle_execution_ended
    calls = []

    def down_twice(self, *args, **kwargs):  # success and then failure handling both cut
        calls.append(1)
        if len(calls) <= 2:
            raise redis.ConnectionError("Redis went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DockrqWorker, "handle_execution_ended", down_twice)
    worker = DockrqWorker(["q"], connection=fake_redis)
    worker.work(burst=True)

    assert len(calls) == 2
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert StartedJobRegistry("q", connection=fake_redis).get_job_ids(cleanup=False) == []
    assert worker.executions == {}


def test_an_outcome_redis_did_not_take_in_time_is_written_when_rq_fails_the_job(fake_redis, installed, monkeypatch):
    # Redis away past outcome_retry_seconds as the execution ends, back just after the job
    # gives up, so rq records the failure normally: the container's own outcome is written
    # then, not left for the reaper to call lost.
    from schemas import ExecutionStatus, Keys, Outcome
    from test_worker_jobs import PREFIX

    from worker.execution.channels import ExecutionChannels

    rt = installed(FakeExecutor(exit_code=4))
    rt.settings = rt.settings.model_copy(update={"outcome_retry_seconds": 0.5})
    job = _job(fake_redis, request("k1"), "k1")
    real_store = ExecutionChannels._store_outcome
    redis_down = [True]

    def store(self, payload):
        if redis_down[0]:
            raise redis.ConnectionError("Connection refused")
        return real_store(self, payload)

    def kept_and_redis_back(outcome):
        real_keep(outcome)
        redis_down[0] = False

    real_keep = rt.keep_unwritten
    monkeypatch.setattr(ExecutionChannels, "_store_outcome", store)
    monkeypatch.setattr(rt, "keep_unwritten", kept_and_redis_back)
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)

    raw = fake_redis.lrange(Keys(PREFIX).outcome("k1"), 0, -1)
    assert len(raw) == 1
    got = Outcome.model_validate_json(raw[0])
    assert (got.status, got.exit_code) == (ExecutionStatus.FAILED, 4)
    assert rt.take_unwritten("k1") is None
    assert job.get_status(refresh=True) == JobStatus.FAILED  # rq's record of the outage stays


def test_the_kept_outcome_stays_kept_while_redis_is_still_away(fake_redis, installed, monkeypatch):
    from schemas import ExecutionResult, ExecutionStatus, Outcome

    from worker.execution.channels import ExecutionChannels

    rt = installed(FakeExecutor())
    rt.settings = rt.settings.model_copy(update={"outcome_retry_seconds": 0.5})
    job = _job(fake_redis, request("k2"), "k2")
    kept = Outcome.from_result(ExecutionResult(execution_id="k2", status=ExecutionStatus.SUCCEEDED, exit_code=0))
    rt.keep_unwritten(kept)

    def down(self, payload):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(ExecutionChannels, "_store_outcome", down)
    with pytest.raises(redis.ConnectionError):
        rt.write_unwritten(job)
    assert rt.take_unwritten("k2") == kept


@pytest.mark.parametrize("failures", [2, 50])
def test_redis_away_as_a_job_is_taken_delays_its_start_within_the_budget(fake_redis, installed, monkeypatch, failures):
    """The start-of-run reads ride out an outage shorter than outcome_retry_seconds and the
    execution runs; a longer one is not run and rq fails the job (the reaper's failed-jobs
    sweep, worker.faults.failed, then gives it its one outcome)."""
    from schemas import ExecutionStatus, Keys, Outcome
    from test_worker_jobs import PREFIX

    from worker.execution.channels import ExecutionChannels

    ex = FakeExecutor(exit_code=0)
    rt = installed(ex)
    rt.settings = rt.settings.model_copy(update={"outcome_retry_seconds": 1.0})
    job = _job(fake_redis, request("s1"), "s1")
    real = ExecutionChannels.ended_or_cancelled
    calls = []

    def flaky(self):
        calls.append(1)
        if len(calls) <= failures:
            raise redis.ConnectionError("Connection refused")
        return real(self)

    monkeypatch.setattr(ExecutionChannels, "ended_or_cancelled", flaky)
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)

    raw = fake_redis.lrange(Keys(PREFIX).outcome("s1"), 0, -1)
    if failures == 2:
        got = Outcome.model_validate_json(raw[0])
        assert len(raw) == 1 and ex.started() == ["s1"] and (got.status, got.exit_code) == (ExecutionStatus.SUCCEEDED, 0)
    else:
        assert raw == [] and ex.started() == [] and job.get_status(refresh=True) == JobStatus.FAILED
