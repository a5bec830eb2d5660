"""Round trips of the worker's rq bookkeeping (issue 5): same writes, fewer trips."""

from __future__ import annotations

import pytest
import redis

from worker.service.worker import DockrqWorker


@pytest.fixture
def worker(fake_redis):
    w = DockrqWorker(["q"], connection=fake_redis, name="w-trips")
    w.register_birth()
    yield w
    w.register_death()


def test_a_heartbeat_is_one_pipeline_with_rq_s_writes(worker, fake_redis, monkeypatch):
    fake_redis.persist(worker.key)
    direct, pipelines = [], []
    real_execute = redis.client.Pipeline.execute
    monkeypatch.setattr(fake_redis, "execute_command", lambda *a, **k: direct.append(a))
    monkeypatch.setattr(
        redis.client.Pipeline, "execute", lambda self, *a, **k: pipelines.append(len(self)) or real_execute(self, *a, **k)
    )
    worker.heartbeat()
    assert direct == [] and pipelines == [3]  # HSET last_heartbeat, EXPIRE worker, EXPIRE executions
    monkeypatch.undo()
    assert fake_redis.hget(worker.key, "last_heartbeat")
    assert 0 < fake_redis.ttl(worker.key) <= worker.worker_ttl + 60


def test_a_heartbeat_rides_out_a_redis_outage_unless_asked_to_raise(worker, monkeypatch):
    def down(self, *args, **kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(redis.client.Pipeline, "execute", down)
    worker.heartbeat()  # logged, not raised: the worker keeps going
    with pytest.raises(redis.ConnectionError):
        worker.heartbeat(raise_errors=True)


class _Daemon:
    """What the worker asks the executor before taking a job."""

    def __init__(self, answered_recently: bool) -> None:
        self.answered_recently = answered_recently
        self.pings = 0

    def answered_within(self, seconds: float) -> bool:
        return self.answered_recently

    def is_installed(self) -> bool:
        self.pings += 1
        return True


@pytest.mark.parametrize(("recent", "pings"), [(True, 0), (False, 1)])
def test_no_ping_before_a_job_when_the_daemon_just_answered(worker, monkeypatch, recent, pings):
    from worker.service import runtime as runtime_module
    from worker.service.runtime import WorkerRuntime
    from worker.config.settings import WorkerSettings

    daemon = _Daemon(recent)
    monkeypatch.setattr(runtime_module, "_current", WorkerRuntime(WorkerSettings.load({}), executor=daemon))
    worker._wait_for_docker()
    assert daemon.pings == pings
