"""No rq results stream (``rq:results:ID``) for a finished execution, by any path (fakeredis).

rq's ``WorkerPool`` builds each member with ``job_class=rq.job.Job``
(``rq.worker_pool.run_worker``), and the reaper/adopter fetched jobs as rq's ``Job``:
either way rq's ``Job._handle_success`` ran, whose ``Result.create`` writes the stream.
"""

from __future__ import annotations

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import BaseWorker

from worker.faults import settle
from worker.service.job import DockrqJob
from worker.service.pool import DockrqWorkerPool
from worker.service.worker import DockrqWorker

from test_worker_jobs import KEYS, FakeExecutor, _job, installed, make_runtime, request  # noqa: F401 - fixtures

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")


def _cut(monkeypatch, cls, name, times):
    """``cls.name`` raises ConnectionError on its first ``times`` calls (Redis away), then works."""
    real = getattr(cls, name)
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise redis.ConnectionError("Redis went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, flaky)
    return calls


@pytest.mark.parametrize(
    "cut",
    [
        (BaseWorker, "handle_job_success", 1),  # the success transaction cut: ridden out and retried
        # rq's success and then failure handling cut: Redis failed around the job, and
        # worker.faults.outage.settle_after_outage finishes it from its outcome
        (DockrqWorker, "handle_execution_ended", 2),
    ],
)
def test_a_pool_member_through_a_redis_outage_writes_no_rq_results(fake_redis, installed, monkeypatch, cut):
    installed(FakeExecutor())
    ids = ["p1", "p2", "p3"]
    jobs = [_job(fake_redis, request(i), i) for i in ids]
    calls = _cut(monkeypatch, *cut)
    # As rq's WorkerPool builds a member (rq.worker_pool.run_worker): job_class=rq's Job.
    worker = DockrqWorker(["q"], connection=fake_redis, job_class=Job)
    worker.work(burst=True)

    assert len(calls) >= len(ids)  # the outage hit the first, the later ones ran after it
    assert fake_redis.keys("rq:results:*") == []
    for i, job in zip(ids, jobs, strict=True):
        assert fake_redis.llen(KEYS.outcome(i)) == 1
        assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert StartedJobRegistry("q", connection=fake_redis).get_job_ids(cleanup=False) == []


def test_every_dockrq_worker_and_pool_member_runs_dockrq_jobs(fake_redis, installed):
    installed(FakeExecutor())
    for given in (None, Job, "rq.job.Job", DockrqJob, "worker.rq_job.DockrqJob"):
        worker = DockrqWorker(["q"], connection=fake_redis, job_class=given)
        assert worker.job_class is DockrqJob and worker.queues[0].job_class is DockrqJob, given
    pool = DockrqWorkerPool(["q"], connection=fake_redis, num_workers=2, worker_class=DockrqWorker, name="n")
    assert pool.job_class is DockrqJob  # what rq.worker_pool.run_worker hands each member


def test_a_job_finished_from_rq_job_fetch_writes_no_rq_results(fake_redis, installed):
    # What a reaper or an adopter ends (worker.faults.settle.finish), fetched by any code as rq's Job.
    installed(FakeExecutor())
    _job(fake_redis, request("s1"), "s1")
    queue = Queue("q", connection=fake_redis, serializer=JSONSerializer)
    worker = DockrqWorker([queue], connection=fake_redis)
    started = Job.fetch("s1", connection=fake_redis, serializer=JSONSerializer)
    execution = worker.prepare_execution(started)
    assert type(settle.fetch_job(fake_redis, "s1")) is DockrqJob

    job = Job.fetch("s1", connection=fake_redis, serializer=JSONSerializer)
    job.started_at = now()
    settle.finish(worker, job, queue, execution, {"execution_id": "s1", "status": "succeeded", "exit_code": 0})

    assert fake_redis.keys("rq:results:*") == []
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert StartedJobRegistry("q", connection=fake_redis).get_job_ids(cleanup=False) == []


def test_a_pool_member_refuses_a_job_that_is_not_a_dockrq_execution(fake_redis, installed):
    # The same root cause let a pool member run any importable function (rq's Job refuses nothing).
    ex = FakeExecutor()
    installed(ex)
    job = Queue("q", connection=fake_redis, serializer=JSONSerializer).enqueue_call("os.getpid", job_id="x1")
    DockrqWorker(["q"], connection=fake_redis, job_class=Job).work(burst=True)  # as rq's WorkerPool builds it

    assert job.get_status(refresh=True) == JobStatus.FAILED
    got = fake_redis.lrange(KEYS.outcome("x1"), 0, -1)
    assert len(got) == 1 and b"rejected" in got[0] and ex.started() == []
