"""worker.service.registration: a worker whose registration Redis lost registers again,
with what rq's register_birth wrote, once; never once it is stopping."""

from __future__ import annotations

import logging

import pytest
from rq import Worker

from worker.service.registration import Registration
from worker.service.worker import DockrqWorker


@pytest.fixture
def worker(fake_redis):
    w = DockrqWorker(["q1", "q2"], connection=fake_redis, name="w-rereg")
    w.register_birth()
    w.registration = Registration(w, interval=60)
    yield w


def _registered(fake_redis, worker) -> bool:
    return all(
        fake_redis.sismember(key, worker.key) for key in ("rq:workers", "rq:workers:q1", "rq:workers:q2")
    )


def test_a_heartbeat_finding_the_registration_gone_registers_again_once(worker, fake_redis, caplog):
    born = {k.decode(): v.decode() for k, v in fake_redis.hgetall(worker.key).items()}
    worker.heartbeat(check_registration=True)
    assert not [r for r in caplog.records if "registration was gone" in r.getMessage()]

    fake_redis.flushall()
    worker.set_state("busy")  # rq's own writes after the loss recreate part of the hash only
    caplog.set_level(logging.WARNING)
    worker.heartbeat(check_registration=True)
    assert _registered(fake_redis, worker)
    again = {k.decode(): v.decode() for k, v in fake_redis.hgetall(worker.key).items()}
    for field in ("birth", "queues", "pid", "hostname", "ip_address", "version", "python_version",
                  "dockrq_executor", "dockrq_pid_ns"):
        assert again[field] == born[field], field
    assert again["state"] == "busy" and 0 < fake_redis.ttl(worker.key) <= worker.worker_ttl + 60
    assert Worker.find_by_key(worker.key, connection=fake_redis).birth_date is not None

    worker.heartbeat(check_registration=True)
    worker._beat_at = float("-inf")  # past the heartbeat dedupe: the next beat goes out
    worker.heartbeat(check_registration=True)
    assert len([r for r in caplog.records if "registration was gone" in r.getMessage()]) == 1


def test_a_hash_left_without_birth_is_registered_again(worker, fake_redis):
    fake_redis.delete(worker.key)
    fake_redis.hset(worker.key, "last_heartbeat", "x")  # rq's heartbeat after the loss
    assert worker.registration.check()
    assert fake_redis.hexists(worker.key, "birth")


@pytest.mark.parametrize("how", ["closed", "stop requested"])
def test_a_stopping_worker_does_not_register_again(worker, fake_redis, how):
    if how == "closed":
        worker.registration.close()  # teardown, before rq's register_death
    else:
        worker._stop_requested = True  # rq: a stop asked while busy, after the current job
    fake_redis.flushall()
    assert not worker.registration.check()
    assert not fake_redis.exists("rq:workers") and not fake_redis.hexists(worker.key, "birth")


def test_teardown_closes_the_registration_before_register_death(worker, fake_redis, monkeypatch):
    order = []
    monkeypatch.setattr(worker.registration, "close", lambda: order.append("close"))
    monkeypatch.setattr(DockrqWorker, "register_death", lambda self: order.append("death"))
    worker.teardown()
    assert order == ["close", "death"]
