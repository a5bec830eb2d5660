"""The worker's Redis writes against the wire contract, on fakeredis."""

from __future__ import annotations

import json
import threading
import time

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from schemas.compact_log import read_compact_log
from schemas import Event, ExecutionState, ExecutionStatus, Keys, LogBatch, LogEntry, Outcome
from worker.execution.channels import ExecutionChannels

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")

KEYS = Keys("t")


def channels(redis, execution_id="e1", job=None, **kw):
    options = {"worker": "w1", "retention_seconds": 60, "log_stream_maxlen": 1000, **kw}
    return ExecutionChannels(redis, KEYS, execution_id, job=job, **options)


def entries(n, start=0):
    return [LogEntry(stream="stdout", ts=1.0, data=f"line {start + i}\n") for i in range(n)]


def stream_batches(redis, execution_id="e1"):
    """The replay: the stream's batches, or those of the compact log that replaced it once the log ended."""
    stream = [LogBatch.model_validate_json(fields[b"batch"]) for _, fields in redis.xrange(KEYS.log_stream(execution_id))]
    return stream or read_compact_log(redis, KEYS.log_compact(execution_id)) or []


def drain(pubsub, quiet=0.2):
    """Messages until none came for ``quiet`` seconds (subscribe confirmations read as None)."""
    messages, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < quiet:
        m = pubsub.get_message(timeout=0.02)
        if m is not None and m["type"] == "message":
            messages.append(m["data"])
            idle_since = time.monotonic()
    return messages


def test_outcome_written_exactly_once_first_writer_wins(fake_redis):
    ch = channels(fake_redis)
    first = Outcome.failure("e1", ExecutionStatus.CANCELLED, "cancelled", "by the producer")
    second = Outcome.failure("e1", ExecutionStatus.LOST, "lost", "reaper")
    assert ch.finish(first) is True
    assert ch.finish(second) is False
    stored = fake_redis.lrange(KEYS.outcome("e1"), 0, -1)
    assert [Outcome.model_validate_json(s).status for s in stored] == [ExecutionStatus.CANCELLED]
    assert 0 < fake_redis.ttl(KEYS.outcome("e1")) <= 60


def test_outcome_race_has_one_winner(fake_redis):
    statuses = [ExecutionStatus.SUCCEEDED, ExecutionStatus.CANCELLED, ExecutionStatus.LOST] * 4
    wins: list[bool] = []
    barrier = threading.Barrier(len(statuses))

    def write(index, status):
        ch = channels(fake_redis)
        barrier.wait()
        wins.append(ch.finish(Outcome.failure("e1", status, "x", f"writer {index}")))

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(statuses)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    assert fake_redis.llen(KEYS.outcome("e1")) == 1


def test_outcome_retry_after_a_lost_reply_still_counts_as_ours(fake_redis):
    # The first attempt ran on the server but its reply was lost: the retry sees our own payload.
    outcome = Outcome.failure("e1", ExecutionStatus.CANCELLED, "cancelled", "x")
    fake_redis.rpush(KEYS.outcome("e1"), outcome.model_dump_json())
    assert channels(fake_redis).finish(outcome) is True


def test_outcome_survives_redis_hiccups(fake_redis, monkeypatch):
    import redis

    ch = channels(fake_redis)
    real = ch._write_outcome
    failures = iter([True, True])

    def flaky(**kw):
        if next(failures, False):
            raise redis.ConnectionError("connection reset")
        return real(**kw)

    monkeypatch.setattr(ch, "_write_outcome", flaky)
    assert ch.finish(Outcome.failure("e1", ExecutionStatus.REJECTED, "invalid_request", "engine: Field required"))
    assert fake_redis.llen(KEYS.outcome("e1")) == 1


def _redis_down(*_args, **_kwargs):
    import redis

    raise redis.ConnectionError("Connection refused")


def test_outcome_gives_up_once_redis_has_been_unreachable_for_the_budget(fake_redis, monkeypatch, virtual_time):
    import redis

    import schemas.connections

    clock = virtual_time(schemas.connections)  # its retries wait on virtual time: exact, whatever the load
    ch = channels(fake_redis, outcome_retry_seconds=0.5)
    tries = []

    def down(**kw):
        tries.append(clock.monotonic())
        _redis_down()

    monkeypatch.setattr(ch, "_write_outcome", down)
    began = clock.monotonic()
    with pytest.raises(redis.ConnectionError):
        ch.finish(Outcome.failure("e1", ExecutionStatus.SUCCEEDED, "x", "y"))
    # Waited the budget: not less, and not on to the 5 s backoff cap beyond it.
    assert clock.monotonic() - began == pytest.approx(0.5)
    assert len(tries) > 1 and tries[-1] - began == pytest.approx(0.5)  # retried until the budget was spent
    assert ch.gave_up
    assert fake_redis.llen(KEYS.outcome("e1")) == 0


def test_eof_and_outcome_share_one_budget(fake_redis, monkeypatch, virtual_time):
    # Each retrying write of the end on its own budget would make the end wait for Redis
    # several times over; one clock, from the first write that found it unreachable.
    import redis

    import schemas.connections

    clock = virtual_time(schemas.connections)
    ch = channels(fake_redis, outcome_retry_seconds=0.5)
    monkeypatch.setattr(ch, "_ship", _redis_down)
    monkeypatch.setattr(ch, "_write_outcome", _redis_down)
    began = clock.monotonic()
    ch.send_eof()  # gives up after the budget, logged, not raised
    assert clock.monotonic() - began == pytest.approx(0.5)
    with pytest.raises(redis.ConnectionError):
        ch.finish(Outcome.failure("e1", ExecutionStatus.SUCCEEDED, "x", "y"))
    assert clock.monotonic() - began == pytest.approx(0.5)  # one budget in all, not one per write (1.0)


def test_redis_answering_again_restarts_the_budget(fake_redis, monkeypatch):
    ch = channels(fake_redis, outcome_retry_seconds=0.4)
    real_ship = ch._ship
    down_until = time.monotonic() + 0.3

    def flaky(batch):
        if time.monotonic() < down_until:
            _redis_down()
        return real_ship(batch)

    monkeypatch.setattr(ch, "_ship", flaky)
    assert ch.send_logs(entries(1))  # unreachable for 0.3 s of 0.4, then shipped
    assert not ch.gave_up
    time.sleep(0.2)  # the earlier outage does not count against the outcome
    assert ch.finish(Outcome.failure("e1", ExecutionStatus.SUCCEEDED, "x", "y"))


def test_final_event_only_from_the_winner(fake_redis):
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.events)
    ch = channels(fake_redis)
    ch.finish(Outcome.failure("e1", ExecutionStatus.CANCELLED, "c", "m"))
    ch.finish(Outcome.failure("e1", ExecutionStatus.LOST, "l", "m"))
    events = [Event.model_validate_json(m) for m in drain(pubsub)]
    assert [(e.execution_id, e.status, e.worker) for e in events] == [("e1", ExecutionState.CANCELLED, "w1")]


def test_log_batches_have_gap_free_seq_then_eof(fake_redis):
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.logs_channel("e1"))
    ch = channels(fake_redis)
    assert ch.send_logs(entries(3))
    assert ch.send_logs(entries(2, start=3))
    assert ch.send_logs([])  # nothing to send is not a batch
    ch.send_eof()
    assert ch.send_logs(entries(1)) is False  # nothing after eof
    ch.send_eof()  # only one eof

    live = [json.loads(m) for m in drain(pubsub)]
    assert live == [
        {"seq": 0, "entries": [e.model_dump() for e in entries(3)]},
        {"seq": 3, "entries": [e.model_dump() for e in entries(2, start=3)]},
        {"seq": 5, "eof": True},
    ]
    replay = stream_batches(fake_redis)
    assert [(b.seq, len(b.entries), b.eof) for b in replay] == [(0, 3, False), (3, 2, False), (5, 0, True)]
    # the ended small log is one string now (issue 14), with the stream's retention
    assert not fake_redis.exists(KEYS.log_stream("e1"))
    assert 0 < fake_redis.ttl(KEYS.log_compact("e1")) <= 60


def test_log_stream_is_capped(fake_redis):
    ch = channels(fake_redis, log_stream_maxlen=10)
    for i in range(50):
        ch.send_logs(entries(1, start=i))
    # MAXLEN ~ trims whole macro nodes on a real server; never more than asked is kept by fakeredis.
    assert fake_redis.xlen(KEYS.log_stream("e1")) <= 110
    assert ch.entries_sent == 50


def test_start_checks_in_one_round_trip(fake_redis):
    ch = channels(fake_redis)
    assert ch.ended_or_cancelled() == (None, False)
    fake_redis.set(KEYS.cancel_flag("e1"), 1)
    assert ch.ended_or_cancelled() == (None, True)
    outcome = Outcome.failure("e1", ExecutionStatus.CANCELLED, "cancelled", "before start")
    ch.finish(outcome)
    assert ch.ended_or_cancelled() == (outcome, True)


def test_state_is_published_and_mirrored_into_job_meta(fake_redis):
    job = Queue("q", connection=fake_redis, serializer=JSONSerializer).enqueue_call(
        "worker.jobs.execute", args=({},), job_id="e1", meta={"image": "busybox", "status": "queued"}
    )
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.events)
    ch = channels(fake_redis, job=job)
    assert ch.set_state(ExecutionState.RUNNING, check_cancel=True, container_id="abc") is False
    fake_redis.set(KEYS.cancel_flag("e1"), 1)
    assert ch.set_state(ExecutionState.RUNNING, check_cancel=True) is True

    job.refresh()
    assert job.meta == {
        "image": "busybox", "status": "running", "container_id": "abc", "execution_id": "e1", "worker": "w1",
    }
    assert [Event.model_validate_json(m).status for m in drain(pubsub)] == [ExecutionState.RUNNING] * 2


def test_state_publish_failure_does_not_raise(fake_redis, monkeypatch):
    import redis

    ch = channels(fake_redis)

    def broken(*a, **kw):
        raise redis.ConnectionError("down")

    monkeypatch.setattr(fake_redis, "pipeline", broken)
    assert ch.set_state(ExecutionState.PULLING) is False
