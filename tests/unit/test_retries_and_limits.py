"""Retries and concurrency limits without Docker: the request fields, the wire (payload, outcome, log
markers), the describe line, the CLI options, and rq's RateLimit written by the producer (fakeredis)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry
from rq.serializers import JSONSerializer

from producer import InvalidRequest, Producer, parse_request
from producer.cli import cli
from producer.describe import describe
from producer.logs import AttemptStart, LogCursor
from schemas import AttemptRecord, ExecutionRequest, ExecutionStatus, LogBatch, LogEntry, Outcome, attempts_from_meta

BASE = {"engine": {"image": "busybox", "cmd": ["true"]}}


def _req(**fields) -> ExecutionRequest:
    return ExecutionRequest.model_validate({**BASE, **fields})


# -- the request ------------------------------------------------------------------------------


def test_defaults_keep_what_retries_always_meant():
    req = _req(retries=2)
    assert (req.retry_on, req.retry_backoff_seconds, req.concurrency_key) == (["lost"], 0, None)
    assert "retry_on" not in req.model_dump(mode="json") and "concurrency_key" not in req.model_dump(mode="json")  # old workers take it


def test_backoff_as_rq_retry_interval():
    assert [_req(retry_backoff_seconds=5).backoff_before(a) for a in (2, 3, 4)] == [5, 5, 5]
    assert [_req(retry_backoff_seconds=[1, 10]).backoff_before(a) for a in (2, 3, 4)] == [1, 10, 10]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"retry_on": ["cancelled"]}, "retry_on.0"),
        ({"retry_on": []}, "retry_on"),
        ({"retry_backoff_seconds": -1}, "retry_backoff_seconds"),
        ({"retry_backoff_seconds": []}, "retry_backoff_seconds"),
        ({"retry_backoff_seconds": 1.5}, "retry_backoff_seconds"),
        ({"retries": 11}, "retries"),
        ({"concurrency_key": "a b", "concurrency_limit": 1}, "concurrency_key"),
        ({"concurrency_key": "k", "concurrency_limit": 0}, "concurrency_limit"),
        ({"concurrency_key": "k"}, "concurrency_limit"),
    ],
)
def test_bad_fields_are_refused_by_name(fields, named):
    with pytest.raises(InvalidRequest, match=named):
        parse_request({**BASE, **fields})


def test_set_fields_go_on_the_wire():
    payload = _req(retries=1, retry_on=["failed", "failed", "error"], concurrency_key="t", concurrency_limit=2).model_dump(mode="json")
    assert (payload["retry_on"], payload["concurrency_key"], payload["concurrency_limit"]) == (["failed", "error"], "t", 2)


# -- the outcome and the log ------------------------------------------------------------------


def test_outcome_of_one_attempt_is_as_before_and_a_retried_one_carries_its_history():
    once = Outcome.failure("e", ExecutionStatus.LOST, "worker_lost", "gone")
    assert set(json.loads(once.model_dump_json())) == {"execution_id", "status", "result", "error"}
    meta = {"attempts": 3, "previous_attempts": [
        {"attempt": 1, "status": "failed", "exit_code": 2, "error_code": None}, {"attempt": 2, "status": "lost"},
    ]}
    retried = once.with_attempts(*attempts_from_meta(meta))
    doc = json.loads(retried.model_dump_json())
    assert doc["attempts"] == 3 and [p["status"] for p in doc["previous_attempts"]] == ["failed", "lost"]
    assert Outcome.model_validate(doc) == retried
    assert attempts_from_meta({}) == (1, []) and attempts_from_meta({"attempts": "x"}) == (1, [])
    assert AttemptRecord.of(2, once).error_code == "worker_lost"


def test_log_cursor_yields_each_attempt_marker_once_and_keeps_seq():
    cursor = LogCursor()
    entry = LogEntry(stream="stdout", ts=1.0, data="a\n")
    got = []
    for batch in (
        LogBatch(seq=0, entries=[entry]),
        LogBatch.model_validate_json(LogBatch(seq=1, attempt=2, ts=2.0).to_json()),
        LogBatch(seq=1, attempt=2, ts=2.0),  # the same marker again (live after history)
        LogBatch(seq=1, entries=[entry]),
    ):
        got += cursor.take(batch, skip_gap=False) or []
    assert [(type(e).__name__, getattr(e, "attempt", None)) for e in got] == [
        ("LogEntry", None), ("AttemptStart", 2), ("LogEntry", None)
    ]
    assert cursor.next_seq == 2 and isinstance(got[1], AttemptStart) and got[1].data == ""


# -- describe and the CLI ---------------------------------------------------------------------


def test_describe_renders_retries_and_limits_as_a_comment():
    line = describe(_req(retries=2, retry_on=["failed", "error"], retry_backoff_seconds=[5, 30],
                         concurrency_key="tenant-a", concurrency_limit=3))
    assert line == (
        "docker run --rm --network none busybox true  # dockrq --retries 2 --retry-on failed,error "
        "--retry-backoff 5,30 --concurrency-key tenant-a --concurrency-limit 3"
    )
    assert describe(_req()) == "docker run --rm --network none busybox true"


def test_cli_submit_options_become_request_fields(fake_redis, monkeypatch):
    from producer import cli as cli_module

    monkeypatch.setattr(cli_module.Settings, "producer", lambda self: Producer(connection=fake_redis, prefix="p"))
    args = ["submit", "-d", "--id", "x1", "--retries", "2", "--retry-on", "failed,timed_out", "--retry-backoff",
            "3,9", "--concurrency-key", "k1", "--concurrency-limit", "4", "busybox", "true"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    job = Job.fetch("x1", connection=fake_redis, serializer=JSONSerializer)
    request = job.args[0]
    assert (request["retries"], request["retry_on"], request["retry_backoff_seconds"]) == (2, ["failed", "timed_out"], [3, 9])
    assert (job.rate_limit_key, job.rate_limit_concurrency) == ("k1", 4)
    bad = CliRunner().invoke(cli, ["submit", "-d", "--retry-backoff", "soon", "busybox"])
    assert bad.exit_code == 125 and "retry_backoff_seconds" in bad.output


# -- rq's RateLimit, as the producer writes it ----------------------------------------------------


@pytest.fixture
def producer(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        yield p


def _status(r, eid):
    return Job.fetch(eid, connection=r, serializer=JSONSerializer).get_status()


def test_limited_submits_wait_in_arrival_order_and_cancel_passes_the_slot_on(producer, fake_redis):
    limited = {"concurrency_key": "lic", "concurrency_limit": 1}
    ids = [producer.submit({**BASE, "execution_id": f"{name}", **limited}) for name in ("z1", "y2", "x3")]
    ids += producer.submit_many([{**BASE, "execution_id": "w4", **limited}, {**BASE, "execution_id": "plain"}])
    registry = RateLimitRegistry("lic", fake_redis)
    assert registry.get_allowed_job_ids() == ["z1"]
    assert registry.get_rate_limited_job_ids() == ["y2", "x3", "w4"]  # by arrival, not by id
    assert [_status(fake_redis, i) for i in ("z1", "y2", "plain")] == [
        JobStatus.QUEUED, JobStatus.RATE_LIMITED, JobStatus.QUEUED
    ]
    assert producer.rq_queue().get_job_ids() == ["z1", "plain"]
    assert producer.cancel("x3") == "cancelled"  # waiting: gone from the line
    assert producer.cancel("z1") == "cancelled"  # holding the slot: the next one gets it at once
    assert registry.get_allowed_job_ids() == ["y2"] and registry.get_rate_limited_job_ids() == ["w4"]
    assert _status(fake_redis, "y2") == JobStatus.QUEUED and producer.rq_queue().get_job_ids() == ["plain", "y2"]
    assert producer.wait("x3", timeout=1).status == ExecutionStatus.CANCELLED


def test_attached_output_marks_where_an_attempt_begins(capsys):
    from producer.cli import _write_entry

    _write_entry(LogEntry(stream="stdout", ts=1.0, data="run 1\n"), as_json=False)
    _write_entry(AttemptStart(stream="stderr", ts=2.0, data="", attempt=2), as_json=False)
    _write_entry(AttemptStart(stream="stderr", ts=2.0, data="", attempt=3), as_json=True)
    out, err = capsys.readouterr()
    assert err == "dockrq: attempt 2 begins\n"
    assert out.splitlines()[0] == "run 1" and json.loads(out.splitlines()[1])["attempt"] == 3
