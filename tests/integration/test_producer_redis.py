"""The producer and the dockrq CLI on a real Redis (Lua, blocking reads, real pub/sub).

No worker runs here: where a test needs one, a thread does the worker's part
of the wire contract (outcome via WRITE_OUTCOME_LUA, log batches), which is
what the producer's side is tested against. End-to-end runs with real
``dockrq-worker`` processes live with the worker's tests.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
import redis
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer import DuplicateExecution, ExecutionAlreadyFinished, Producer
from producer.cli import cli
from schemas import (
    DEFAULT_RETENTION_SECONDS,
    WRITE_OUTCOME_LUA,
    Event,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    LogBatch,
    LogEntry,
    Outcome,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(redis_url, redis_client, unique):
    """A producer on a queue and prefix of its own; every key with ``unique`` in it goes afterwards."""
    p = Producer(redis_url, queue=f"q-{unique}", prefix=f"p-{unique}")
    yield p
    p.close()
    leftovers = list(redis_client.scan_iter(match=f"*{unique}*", count=1000))
    if leftovers:
        redis_client.delete(*leftovers)
    redis_client.srem("rq:queues", f"rq:queue:q-{unique}")


@pytest.fixture
def eid(unique):
    """Execution ids carrying the test's token, so the cleanup finds their rq keys too."""
    return lambda name: f"{unique}-{name}"


def _request(execution_id: str) -> dict:
    return {"execution_id": execution_id, "engine": {"image": "busybox", "cmd": ["echo", "hi"]}}


def _worker_writes_outcome(r: redis.Redis, p: Producer, outcome: Outcome) -> int:
    return r.eval(WRITE_OUTCOME_LUA, 1, p.keys.outcome(outcome.execution_id), outcome.model_dump_json(), 60)


def _succeeded(execution_id: str) -> Outcome:
    return Outcome.from_result(ExecutionResult(execution_id=execution_id, status=ExecutionStatus.SUCCEEDED, exit_code=0))


def _job(p: Producer, execution_id: str) -> Job:
    return Job.fetch(execution_id, connection=p.connection, serializer=JSONSerializer)


# -- wait ----------------------------------------------------------------------


def test_three_concurrent_waiters_all_get_the_outcome(producer, redis_client, eid):
    execution_id = producer.submit(_request(eid("w")))
    got: list[Outcome] = []
    waiters = [threading.Thread(target=lambda: got.append(producer.wait(execution_id, timeout=60))) for _ in range(3)]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    assert got == []  # all blocked
    outcome = _succeeded(execution_id)
    assert _worker_writes_outcome(redis_client, producer, outcome) == 1
    for w in waiters:
        w.join(60)
    assert got == [outcome] * 3
    # Nothing was consumed: a waiter that comes after the end gets it at once (with no time
    # to wait at all, anything but the outcome already there would be a TimeoutError).
    assert producer.wait(execution_id, timeout=0) == outcome
    assert redis_client.llen(producer.keys.outcome(execution_id)) == 1


def test_wait_times_out(producer, eid):
    execution_id = producer.submit(_request(eid("slow")))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="after 0.5s"):
        producer.wait(execution_id, timeout=0.5)
    assert time.monotonic() - started > 0.45  # not before its time


# -- logs ----------------------------------------------------------------------


def test_late_log_subscriber_gets_the_full_log(producer, redis_client, eid):
    execution_id = producer.submit(_request(eid("logs")))
    stream, channel = producer.keys.log_stream(execution_id), producer.keys.logs_channel(execution_id)
    total = 300
    halfway = threading.Event()

    def worker() -> None:
        for seq in range(total):
            batch = LogBatch(seq=seq, entries=[LogEntry(stream="stdout", ts=time.time(), data=f"line {seq}\n")])
            with redis_client.pipeline() as pipe:
                pipe.xadd(stream, {"batch": batch.to_json()})
                pipe.publish(channel, batch.to_json())
                pipe.execute()
            if seq == total // 2:
                halfway.set()
            time.sleep(0.002)
        eof = LogBatch(seq=total, eof=True).to_json()
        redis_client.xadd(stream, {"batch": eof})
        redis_client.publish(channel, eof)
        _worker_writes_outcome(redis_client, producer, _succeeded(execution_id))

    results: dict[str, list[str]] = {}

    def follow(name: str) -> None:
        results[name] = [e.data for e in producer.logs(execution_id, follow=True)]

    early = threading.Thread(target=follow, args=("early",))
    early.start()
    time.sleep(0.2)
    threading.Thread(target=worker, daemon=True).start()
    assert halfway.wait(10)
    late = threading.Thread(target=follow, args=("late",))
    late.start()
    early.join(15)
    late.join(15)
    follow("after the end")
    expected = [f"line {i}\n" for i in range(total)]
    assert results == {"early": expected, "late": expected, "after the end": expected}


# -- cancel ----------------------------------------------------------------------


def test_cancel_of_a_queued_execution_writes_exactly_one_outcome(producer, redis_client, eid):
    execution_id = producer.submit(_request(eid("cq")))
    events = redis_client.pubsub()
    events.subscribe(producer.keys.events)
    assert events.get_message(timeout=1)["type"] == "subscribe"

    assert producer.cancel(execution_id) == "cancelled"

    assert redis_client.llen(producer.keys.outcome(execution_id)) == 1
    outcome = producer.wait(execution_id, timeout=1)
    assert outcome.status is ExecutionStatus.CANCELLED
    assert outcome.error.code == "cancelled"
    job = _job(producer, execution_id)
    assert job.get_status() == JobStatus.CANCELED
    assert job.meta["status"] == "cancelled"
    assert execution_id not in producer.rq_queue().get_job_ids()
    assert execution_id in producer.rq_queue().canceled_job_registry.get_job_ids()
    assert redis_client.exists(producer.keys.cancel_flag(execution_id))
    message = events.get_message(timeout=1)
    event = Event.model_validate_json(message["data"])
    assert (event.execution_id, event.status) == (execution_id, ExecutionState.CANCELLED)
    # The outcome stays the only one: a worker or reaper that comes later loses the race.
    assert _worker_writes_outcome(redis_client, producer, _succeeded(execution_id)) == 0
    with pytest.raises(ExecutionAlreadyFinished):
        producer.cancel(execution_id)
    assert redis_client.llen(producer.keys.outcome(execution_id)) == 1
    for key in (producer.keys.outcome(execution_id), producer.keys.cancel_flag(execution_id), job.key):
        assert 0 < redis_client.ttl(key) <= DEFAULT_RETENTION_SECONDS


def test_concurrent_cancels_end_it_once(producer, redis_client, eid):
    execution_id = producer.submit(_request(eid("cc")))
    results: list[str] = []
    barrier = threading.Barrier(5)

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(producer.cancel(execution_id))
        except ExecutionAlreadyFinished:
            results.append("already")

    threads = [threading.Thread(target=attempt) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already"] * 4 + ["cancelled"]
    assert redis_client.llen(producer.keys.outcome(execution_id)) == 1


def test_cancel_of_a_scheduled_execution(producer, eid):
    execution_id = producer.submit(_request(eid("cs")), delay=timedelta(hours=1))
    registry = producer.rq_queue().scheduled_job_registry
    assert registry.get_job_ids() == [execution_id]
    assert producer.status(execution_id).state is ExecutionState.SCHEDULED

    assert producer.cancel(execution_id) == "cancelled"

    assert registry.get_job_ids() == []
    assert producer.wait(execution_id, timeout=1).status is ExecutionStatus.CANCELLED
    assert producer.status(execution_id).state is ExecutionState.CANCELLED


# -- submit ----------------------------------------------------------------------


def test_concurrent_duplicate_submits_enqueue_once(producer, eid):
    execution_id = eid("dup")
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def attempt() -> None:
        barrier.wait()
        try:
            producer.submit(_request(execution_id))
            outcomes.append("ok")
        except DuplicateExecution:
            outcomes.append("dup")

    threads = [threading.Thread(target=attempt) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["dup"] * 9 + ["ok"]
    assert producer.rq_queue().get_job_ids() == [execution_id]


def test_submit_many_of_thousands_is_two_round_trips(producer, eid, monkeypatch):
    # What makes submit_many fast (thousands a second, see BENCHMARKS.md) is counted here, not
    # timed: one script call for the claims and one MULTI for the jobs and their events, whatever
    # the batch size, with the job hashes written by producer.jobhash rather than by rq job by job.
    producer.submit_many([_request(eid(f"warm{i}")) for i in range(2)])  # loads the script, makes the job writer
    direct: list[str] = []
    pipelines: list[int] = []
    real_command, real_execute = producer.connection.execute_command, redis.client.Pipeline.execute

    def command(*args, **kwargs):
        direct.append(args[0])
        return real_command(*args, **kwargs)

    def execute(self, *args, **kwargs):
        pipelines.append(len(self))
        return real_execute(self, *args, **kwargs)

    def per_job(*args, **kwargs):
        raise AssertionError("rq's enqueue_many used instead of the batched job hashes")

    monkeypatch.setattr(producer.connection, "execute_command", command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    monkeypatch.setattr(Queue, "enqueue_many", per_job)
    requests = [_request(eid(f"bulk{i}")) for i in range(3000)]
    ids = producer.submit_many(requests)
    monkeypatch.undo()
    assert ids == [r["execution_id"] for r in requests]
    assert direct == ["EVALSHA"] and len(pipelines) == 1
    assert producer.rq_queue().count == 3002


# -- CLI -------------------------------------------------------------------------


def _cli(producer: Producer, *args: str):
    base = ["--redis-url", producer.redis_url, "--prefix", producer.keys.prefix, "--queue", producer.queue]
    return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# wait, logs and status ride a Redis that never answered out for --redis-retry seconds, then exit 69
@pytest.mark.parametrize(("args", "code"), [(["status", "x"], 69), (["submit", "busybox"], 125), (["wait", "x"], 69)])
def test_cli_redis_unreachable_is_one_line_without_the_password(args, code):
    url = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--redis-url", url, "--redis-retry", "1", *args], catch_exceptions=False)
    assert result.exit_code == code
    assert result.stderr.startswith(f"dockrq: cannot reach Redis at redis://:***@127.0.0.1:")
    assert result.stderr.count("\n") == 1
    assert "hunter2" not in result.output
    assert time.monotonic() - started < 60  # gave up, did not retry as if Redis would come back


def test_cli_unknown_id(producer):
    result = _cli(producer, "status", "ghost")
    assert (result.exit_code, result.stderr) == (1, "dockrq: no such execution: ghost\n")
    assert _cli(producer, "wait", "ghost").exit_code == 125


def test_cli_invalid_request(producer):
    result = _cli(producer, "submit", "--cpus", "-1", "busybox")
    assert result.exit_code == 125
    assert result.stderr.startswith("dockrq: invalid request: resources.cpus: ")
    assert producer.rq_queue().count == 0


def test_cli_submit_detached_status_and_ls(producer, eid):
    result = _cli(producer, "submit", "-d", "--id", eid("cli"), "-e", "TOKEN=s3cret", "busybox", "echo", "hi")
    assert (result.exit_code, result.stdout) == (0, f"{eid('cli')}\n")
    job = _job(producer, eid("cli"))
    assert job.description == "docker run --rm -e TOKEN=*** --network none busybox echo hi"
    status = _cli(producer, "status", eid("cli"))
    assert status.exit_code == 0 and "queued" in status.stdout
    listing = _cli(producer, "ls")
    assert listing.exit_code == 0
    assert eid("cli") in listing.stdout and "busybox" in listing.stdout


def test_cli_ctrl_c_cancels_the_attached_execution(producer, eid, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Producer, "logs", interrupted)
    result = _cli(producer, "submit", "--id", eid("ctrlc"), "busybox", "sleep", "60")
    assert result.exit_code == 130
    assert result.stderr == f"dockrq: cancelled execution {eid('ctrlc')}\n"
    assert producer.wait(eid("ctrlc"), timeout=1).status is ExecutionStatus.CANCELLED
