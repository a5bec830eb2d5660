"""The request size bound, on fakeredis: the producer refuses before writing anything,
the worker rejects a job over its limit without inflating it, and what one accepts the other does."""

from __future__ import annotations

import json
import tracemalloc
import zlib

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import producer.cli as cli_module
from producer import InvalidRequest, Producer, RequestTooLarge
from producer.cli import cli
from schemas import DEFAULT_MAX_REQUEST_BYTES, JOB_FRAMING_BYTES, JOB_FUNCTION, ExecutionStatus, request_size
from worker.service.job import _larger_than
from worker.service.worker import DockrqWorker

from test_worker_jobs import KEYS, FakeExecutor, installed, make_runtime, outcome  # noqa: F401 - fixtures

MiB = 1024 * 1024
LIMIT = 4096


def _request(execution_id: str, env_value: str = "") -> dict:
    return {"execution_id": execution_id, "engine": {"image": "busybox", "cmd": ["true"], "env": {"BIG": env_value}}}


def _sized(execution_id: str, size: int) -> dict:
    """A request whose JSON in the rq job is exactly ``size`` bytes."""
    base = request_size(_producer_dump(_request(execution_id)))
    return _request(execution_id, "x" * (size - base))


def _producer_dump(request: dict) -> dict:
    from producer import parse_request

    return parse_request(request).model_dump(mode="json")


# -- the producer -------------------------------------------------------------------


@pytest.fixture
def small(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="t", max_request_bytes=LIMIT) as p:
        yield p


def test_default_limit_is_one_mib(fake_redis):
    assert DEFAULT_MAX_REQUEST_BYTES == MiB
    with Producer(connection=fake_redis) as p:
        assert p.max_request_bytes == MiB


def test_submit_refuses_a_request_over_the_limit_and_writes_nothing(fake_redis):
    big = _request("big", "v" * (2 * MiB))
    with Producer(connection=fake_redis, queue="q", prefix="t") as p, pytest.raises(RequestTooLarge) as caught:
        p.submit(big)
    size = request_size(_producer_dump(big))
    assert (caught.value.size, caught.value.limit) == (size, MiB)
    assert str(caught.value) == f"request: {size} bytes of JSON, above the limit of {MiB} bytes (max_request_bytes)"
    assert isinstance(caught.value, InvalidRequest)  # callers catching InvalidRequest need no change
    assert fake_redis.keys("*") == []  # no claim, no job, no event


def test_the_limit_is_inclusive_and_measured_as_stored(small, fake_redis):
    assert small.submit(_sized("fits", LIMIT)) == "fits"
    stored = Job.fetch("fits", connection=fake_redis, serializer=JSONSerializer)
    assert len(json.dumps(stored.args[0])) == LIMIT  # the measure is the request's JSON in the rq job
    with pytest.raises(RequestTooLarge) as caught:
        small.submit(_sized("over", LIMIT + 1))
    assert caught.value.size == LIMIT + 1
    assert not fake_redis.exists(KEYS.claim("over"), Job.key_for("over"))


def test_non_ascii_counts_as_rq_stores_it(small):
    # 1,000 'é' are 2,000 bytes of UTF-8 but 6,000 in the job (JSON escapes, as rq writes them).
    with pytest.raises(RequestTooLarge) as caught:
        small.submit(_request("accents", "é" * 1000))
    assert caught.value.size > 6000


def test_scheduled_submit_is_bounded_too(small, fake_redis):
    from datetime import timedelta

    with pytest.raises(RequestTooLarge):
        small.submit(_sized("later", LIMIT + 1), delay=timedelta(minutes=5))
    assert fake_redis.keys("*") == []


def test_submit_many_checks_every_request_before_writing_any(small, fake_redis):
    batch = [_sized("a", 1000), _sized("b", LIMIT), _sized("c", LIMIT + 10), _sized("d", 2000)]
    with pytest.raises(RequestTooLarge) as caught:
        small.submit_many(batch)
    assert str(caught.value).startswith(f"requests[2]: {LIMIT + 10} bytes of JSON, above the limit of {LIMIT}")
    assert fake_redis.keys("*") == []
    assert small.submit_many([batch[0], batch[1], batch[3]]) == ["a", "b", "d"]


def test_a_limit_below_any_request_is_refused(fake_redis):
    with pytest.raises(ValueError, match="at least 1024"):
        Producer(connection=fake_redis, max_request_bytes=100)


def test_cli_submit_says_which_limit_and_exits_125(fake_redis, monkeypatch):
    def make(url, *, queue, prefix, retention_seconds):
        return Producer(connection=fake_redis, queue=queue, prefix="t", retention_seconds=retention_seconds)

    monkeypatch.setattr(cli_module, "Producer", make)
    result = CliRunner().invoke(cli, ["submit", "-d", "-e", f"BIG={'x' * (2 * MiB)}", "busybox", "true"])
    assert result.exit_code == 125
    assert result.stderr.startswith("dockrq: invalid request: request: ")
    assert f"above the limit of {MiB} bytes (max_request_bytes)" in result.stderr
    assert fake_redis.keys("*") == []


# -- the worker ---------------------------------------------------------------------


def _raw_job(redis, job_id: str, data: bytes) -> Job:
    """A job as a non-Python producer may write it: any data, zlib-compressed or not."""
    job = Queue("q", connection=redis, serializer=JSONSerializer).enqueue_call(
        JOB_FUNCTION, args=({"engine": {"image": "busybox"}},), job_id=job_id
    )
    redis.hset(job.key, "data", data)
    return job


def _call(request: dict) -> bytes:
    return json.dumps([JOB_FUNCTION, None, [request], {}]).encode()


def test_worker_rejects_a_job_over_its_limit_without_running_it(fake_redis, installed):
    ex = FakeExecutor()
    installed(ex)
    stored = {
        "plain": _call(_request("plain", "x" * (2 * MiB))),  # uncompressed: rq reads it as it is
        "zipped": zlib.compress(_call(_request("zipped", "x" * (2 * MiB)))),
        "bomb": zlib.compress(b"[" + b" " * (64 * MiB)),  # 64 KB that would inflate to 64 MB
    }
    for job_id, data in stored.items():
        _raw_job(fake_redis, job_id, data)
    Queue("q", connection=fake_redis, serializer=JSONSerializer).enqueue_call(
        JOB_FUNCTION, args=(_request("fine"),), job_id="fine"
    )

    DockrqWorker(["q"], connection=fake_redis, name="w-size").work(burst=True)

    limit = DEFAULT_MAX_REQUEST_BYTES
    for job_id, data in stored.items():
        got = outcome(fake_redis, job_id)
        assert (got.status, got.error.code) == (ExecutionStatus.REJECTED, "invalid_request")
        assert got.error.message == (
            f"request: more than {limit + JOB_FRAMING_BYTES} bytes of rq job data, "
            f"above this worker's limit {limit} (DOCKRQ_MAX_REQUEST_BYTES)"
        )
        assert Job.fetch(job_id, connection=fake_redis, serializer=JSONSerializer).get_status() == JobStatus.FAILED
        assert fake_redis.hget(Job.key_for(job_id), "data") == data  # kept as it was written
    assert ex.started() == ["fine"]
    assert outcome(fake_redis, "fine").status == ExecutionStatus.SUCCEEDED


def test_what_the_producer_accepts_the_worker_runs(fake_redis, installed):
    ex = FakeExecutor()
    installed(ex)
    with Producer(connection=fake_redis, queue="q", prefix="t") as p:
        p.submit(_sized("largest", MiB))
        with pytest.raises(RequestTooLarge):
            p.submit(_sized("too-large", MiB + 1))

    DockrqWorker(["q"], connection=fake_redis, name="w-size").work(burst=True)

    assert ex.started() == ["largest"]
    assert outcome(fake_redis, "largest").status == ExecutionStatus.SUCCEEDED


def test_the_size_check_never_inflates_more_than_the_limit():
    bomb = zlib.compress(b"\0" * (256 * MiB))  # 256 KB
    tracemalloc.start()
    try:
        assert _larger_than(bomb, MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB
    small = zlib.compress(b"x" * 100)
    assert not _larger_than(small, 100) and _larger_than(small, 99)
    assert not _larger_than(b"not zlib", 8) and _larger_than(b"not zlib", 7)  # rq reads those bytes as they are
