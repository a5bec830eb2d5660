"""Producer.as_completed / wait_many and ``dockrq wait ID...`` against fakeredis."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner

import producer.cli as cli_module
from producer import ExecutionNotFound, Producer, WaitTimeout
from producer.cli import cli
from producer.many import FollowState
from schemas import WRITE_OUTCOME_LUA, ExecutionResult, ExecutionStatus, Keys, Outcome

KEYS = Keys("p")


@pytest.fixture
def prod(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        yield p


def _req(eid):
    return {"execution_id": eid, "engine": {"image": "busybox", "cmd": ["true"]}}


def _end_silently(r, eid, status=ExecutionStatus.SUCCEEDED, exit_code=0):
    """An outcome whose final event was lost: only the key is written."""
    outcome = Outcome.from_result(ExecutionResult(execution_id=eid, status=status, exit_code=exit_code))
    r.eval(WRITE_OUTCOME_LUA, 1, KEYS.outcome(eid), outcome.model_dump_json(), 60)


def test_as_completed_in_end_order_each_once(prod, fake_redis):
    ids = prod.submit_many([_req(f"m{i}") for i in range(5)])
    _end_silently(fake_redis, "m3")  # ended before the wait began

    def ender():
        time.sleep(0.2)
        for eid in ("m1", "m4", "m0", "m2"):
            prod.cancel(eid)  # writes the outcome and publishes the final event
            time.sleep(0.05)

    t = threading.Thread(target=ender)
    t.start()
    got = [o.execution_id for o in prod.as_completed(ids + ["m1"], timeout=10)]
    t.join()
    assert got == ["m3", "m1", "m4", "m0", "m2"]


def test_lost_event_is_found_by_the_recheck(prod, fake_redis):
    (eid,) = prod.submit_many([_req("lost1")])
    threading.Timer(0.3, lambda: _end_silently(fake_redis, eid)).start()
    outcomes = prod.wait_many([eid], timeout=10, recheck_seconds=0.5)
    assert list(outcomes) == [eid] and outcomes[eid].status == ExecutionStatus.SUCCEEDED


def test_timeout_lists_what_has_not_ended(prod, fake_redis):
    ids = prod.submit_many([_req(f"t{i}") for i in range(3)])
    prod.cancel("t1")
    with pytest.raises(WaitTimeout) as info:
        prod.wait_many(ids, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert info.value.pending == ["t0", "t2"] and list(info.value.outcomes) == ["t1"]
    assert "2 execution(s) not ended after 0.3s: t0, t2" in str(info.value)


def test_unknown_ids_are_refused_before_anything_is_yielded(prod):
    prod.submit_many([_req("k1")])
    prod.cancel("k1")
    with pytest.raises(ExecutionNotFound, match="ghost-a, ghost-b"):
        list(prod.as_completed(["k1", "ghost-a", "ghost-b"], timeout=5))
    with pytest.raises(ExecutionNotFound, match="not an execution id"):
        prod.wait_many(["a:b"])


@pytest.mark.parametrize("phantom", [None, "meta", "last_heartbeat"])
def test_vanished_execution_is_not_waited_for_forever(prod, fake_redis, monkeypatch, phantom):
    """Also when a worker's later write recreated the job hash with one field (no created_at)."""
    import producer.many as many

    monkeypatch.setattr(many, "VANISH_GRACE_SECONDS", 0.2)
    prod.submit_many([_req("gone1")])

    def vanish():
        time.sleep(0.2)
        fake_redis.delete("rq:job:gone1", KEYS.claim("gone1"))
        if phantom:
            fake_redis.hset("rq:job:gone1", phantom, "x")

    threading.Thread(target=vanish).start()
    with pytest.raises(ExecutionNotFound, match="vanished"):
        prod.wait_many(["gone1"], timeout=10, recheck_seconds=0.1)


def test_state_machine_hints_only_final_events_of_pending_ids():
    state = FollowState(["a", "b"], timeout=None)
    assert state.to_read(0.0) == (["a", "b"], True)
    state.full_check_done()
    state.on_message({"type": "message", "data": '{"execution_id": "a", "status": "running"}'})
    state.on_message({"type": "message", "data": '{"execution_id": "zzz", "status": "failed"}'})
    state.on_message({"type": "message", "data": "not json"})
    assert state.to_read(1.0) == ([], False)
    state.on_message({"type": "message", "data": '{"execution_id": "b", "status": "failed"}'})
    assert state.to_read(1.0) == (["b"], False)
    state.on_message({"type": "subscribe", "data": 1})  # a re-subscription: read everything again
    assert state.to_read(1.5) == (["a", "b"], True)


# -- dockrq wait ID... ---------------------------------------------------------------------


@pytest.fixture
def fake_cli(fake_redis, monkeypatch):
    def make(url, *, queue, prefix, retention_seconds):
        return Producer(connection=fake_redis, queue=queue, prefix="p", retention_seconds=retention_seconds)

    monkeypatch.setattr(cli_module, "Producer", make)
    return fake_redis


def _run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("ends", "code"),
    [
        ([(ExecutionStatus.SUCCEEDED, 0), (ExecutionStatus.SUCCEEDED, 0)], 0),
        ([(ExecutionStatus.SUCCEEDED, 0), (ExecutionStatus.FAILED, 3), (ExecutionStatus.FAILED, 2)], 3),
        ([(ExecutionStatus.FAILED, 3), (ExecutionStatus.TIMED_OUT, None)], 124),
        ([(ExecutionStatus.TIMED_OUT, None), (ExecutionStatus.CANCELLED, None)], 130),
        ([(ExecutionStatus.CANCELLED, None), (ExecutionStatus.LOST, None)], 125),
    ],
)
def test_wait_several_exits_with_the_worst(fake_cli, ends, code):
    ids = []
    for index, (status, exit_code) in enumerate(ends):
        eid = f"w{index}"
        _run("submit", "-d", "--id", eid, "busybox")
        _end_silently(fake_cli, eid, status, exit_code)
        ids.append(eid)
    result = _run("wait", *ids)
    assert result.exit_code == code
    assert sorted(line.split()[0] for line in result.stdout.splitlines()) == ids


def test_wait_several_timeout_is_75_unless_worse(fake_cli):
    for eid in ("x1", "x2", "x3"):
        _run("submit", "-d", "--id", eid, "busybox")
    _end_silently(fake_cli, "x1", ExecutionStatus.FAILED, 4)
    result = _run("wait", "--timeout", "0.3", "x1", "x2")
    assert result.exit_code == 75 and "x2" in result.stderr and "x1  failed (4)" in result.stdout
    _end_silently(fake_cli, "x3", ExecutionStatus.ERROR, None)
    assert _run("wait", "--timeout", "0.3", "x2", "x3").exit_code == 125
    assert _run("wait", "x1", "ghost").exit_code == 125


# -- Redis away: ridden out with schemas.connections, not own loops ---------------------------


def test_follow_rides_out_an_outage_and_misses_nothing(prod, fake_redis, monkeypatch, virtual_time):
    import redis

    import producer.many as many

    virtual_time(many)
    (eid,) = prod.submit_many([_req("away1")])
    _end_silently(fake_redis, eid)
    real, calls = many.read_outcomes, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:  # Redis away for the first two reads
            raise redis.ConnectionError("connection refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(many, "read_outcomes", flaky)
    assert [o.execution_id for o in prod.as_completed([eid], timeout=60)] == [eid]
    assert len(calls) == 3


def test_ride_out_outage_async_retries_then_gives_up_when_told():
    import asyncio

    import redis
    from redis.backoff import NoBackoff

    from schemas.connections import ride_out_outage_async

    attempts = []

    async def down_twice():
        attempts.append(1)
        if len(attempts) <= 2:
            raise redis.TimeoutError("timed out")
        return "ok"

    assert asyncio.run(ride_out_outage_async(down_twice, backoff=NoBackoff())) == "ok"

    async def always_down():
        raise redis.ConnectionError("refused")

    with pytest.raises(redis.ConnectionError):
        asyncio.run(ride_out_outage_async(always_down, backoff=NoBackoff(), keep_trying=lambda: False))

    async def refused():
        raise redis.ResponseError("WRONGTYPE")  # an answer, not an outage: not retried

    with pytest.raises(redis.ResponseError):
        asyncio.run(ride_out_outage_async(refused, backoff=NoBackoff()))
