"""Redis failing around a job's rq bookkeeping: the worker settles the job once Redis is back (fakeredis)."""

from __future__ import annotations

import pytest
import redis
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.worker import BaseWorker

from worker.rq_worker import DockrqWorker

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
    real = BaseWorker.handle_execution_ended
    calls = []

    def down_twice(self, *args, **kwargs):  # success and then failure handling both cut
        calls.append(1)
        if len(calls) <= 2:
            raise redis.ConnectionError("Redis went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BaseWorker, "handle_execution_ended", down_twice)
    worker = DockrqWorker(["q"], connection=fake_redis)
    worker.work(burst=True)

    assert len(calls) == 2
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert StartedJobRegistry("q", connection=fake_redis).get_job_ids(cleanup=False) == []
    assert worker.executions == {}
