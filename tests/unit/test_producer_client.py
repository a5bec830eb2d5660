"""Producer API against fakeredis: what lands in Redis on submit, wait, cancel and status.

Paths that run Lua (cancelling a queued job writes its outcome with
WRITE_OUTCOME_LUA) are tested on real Redis in tests/integration.
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import producer.client as client_module
import producer.waiting as waiting_module
from producer import (
    DuplicateExecution,
    ExecutionAlreadyFinished,
    ExecutionNotFound,
    ExecutionVanished,
    InvalidRequest,
    Producer,
    ProducerError,
)
from producer.jobhash import JobWriter
from producer.status import build_view
from schemas import (
    CANCEL_MESSAGE,
    JOB_FUNCTION,
    Event,
    ExecutionRequest,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    Keys,
    Outcome,
)

REQUEST = {
    "engine": {"image": "busybox:latest", "cmd": ["sh", "-c", "echo hi"], "env": {"TOKEN": "s3cret"}},
    "resources": {"memory": "256m"},
    "timeout_seconds": 30,
}


@pytest.fixture
def producer(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        yield p


def _request(execution_id: str, **extra) -> dict:
    return {**REQUEST, "execution_id": execution_id, **extra}


def _job(p: Producer, execution_id: str) -> Job:
    return Job.fetch(execution_id, connection=p.connection, serializer=JSONSerializer)


def _write_outcome(r: redis.Redis, execution_id: str, status=ExecutionStatus.SUCCEEDED, exit_code=0) -> Outcome:
    """What a worker does when an execution ends (without Lua: fakeredis has no EVAL)."""
    result = ExecutionResult(execution_id=execution_id, status=status, exit_code=exit_code)
    outcome = Outcome.from_result(result)
    r.rpush(Keys("p").outcome(execution_id), outcome.model_dump_json())
    return outcome


def _subscribe(r: redis.Redis, channel: str):
    pubsub = r.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    return pubsub


def _next_data(pubsub, timeout: float = 1.0) -> bytes:
    message = pubsub.get_message(timeout=timeout)
    assert message is not None and message["type"] == "message"
    return message["data"]


# -- submit ------------------------------------------------------------------


def test_submit_enqueues_a_json_rq_job_named_by_string(producer, fake_redis):
    execution_id = producer.submit(_request("exec-1"))
    assert execution_id == "exec-1"
    assert producer.rq_queue().get_job_ids() == ["exec-1"]
    # Stored with the JSON serializer: the job's data is plain JSON, readable without pickle.
    raw = zlib.decompress(fake_redis.hget("rq:job:exec-1", "data"))
    func, instance, args, kwargs = json.loads(raw)
    assert (func, instance, kwargs) == (JOB_FUNCTION, None, {})
    assert args == [ExecutionRequest.model_validate(_request("exec-1")).model_dump(mode="json")]
    job = _job(producer, "exec-1")
    assert job.meta == {"execution_id": "exec-1", "image": "busybox:latest", "status": "queued"}
    assert "s3cret" not in job.description
    assert job.description.startswith("docker run --rm -e TOKEN=*** --memory 256m")
    # rq's own timeout leaves the worker room to pull, enforce the request's timeout and stop.
    assert job.timeout == 30 + client_module.JOB_TIMEOUT_MARGIN_SECONDS
    assert job.result_ttl == producer.retention_seconds
    assert job.failure_ttl == producer.retention_seconds


def test_no_request_timeout_means_no_rq_timeout(producer):
    producer.submit({"execution_id": "x", "engine": {"image": "busybox"}})
    assert _job(producer, "x").timeout == -1


@pytest.mark.parametrize(
    "form", [lambda d: d, lambda d: json.dumps(d), lambda d: ExecutionRequest.model_validate(d)], ids=["dict", "json", "model"]
)
def test_submit_accepts_dict_json_and_model(producer, form):
    assert producer.submit(form(_request("form-1"))) == "form-1"
    assert producer.rq_queue().count == 1


def test_submit_generates_an_id_when_none_given(producer):
    execution_id = producer.submit(REQUEST)
    assert len(execution_id) == 32
    assert producer.rq_queue().get_job_ids() == [execution_id]


def test_submit_publishes_queued_event(producer, fake_redis):
    pubsub = _subscribe(fake_redis, "p:events")
    producer.submit(_request("ev-1"))
    event = Event.model_validate_json(_next_data(pubsub))
    assert (event.execution_id, event.status, event.worker) == ("ev-1", ExecutionState.QUEUED, None)


def test_submit_with_delay_schedules_in_rq(producer, fake_redis):
    pubsub = _subscribe(fake_redis, "p:events")
    before = time.time()
    producer.submit(_request("later"), delay=timedelta(minutes=5))
    after = time.time()
    assert producer.rq_queue().count == 0
    registry = producer.rq_queue().scheduled_job_registry
    assert registry.get_job_ids() == ["later"]
    # Five minutes from the submit, to the whole second rq keeps.
    assert math.floor(before + 300) <= registry.get_scheduled_time("later").timestamp() <= after + 300
    assert _job(producer, "later").meta["status"] == "scheduled"
    assert Event.model_validate_json(_next_data(pubsub)).status == ExecutionState.SCHEDULED
    with pytest.raises(ValueError):
        producer.submit(_request("both"), at=datetime.now(timezone.utc), delay=timedelta(seconds=1))


def test_submit_to_another_queue(producer):
    producer.submit(_request("other-q"), queue="gpu")
    assert producer.rq_queue("gpu").get_job_ids() == ["other-q"]
    assert producer.rq_queue().count == 0


def test_duplicate_id_is_refused_and_nothing_runs_twice(producer):
    producer.submit(_request("dup"))
    with pytest.raises(DuplicateExecution) as err:
        producer.submit(_request("dup"))
    assert err.value.execution_ids == ["dup"]
    assert producer.rq_queue().get_job_ids() == ["dup"]


def test_id_of_an_ended_execution_is_refused_while_its_outcome_lives(producer, fake_redis):
    _write_outcome(fake_redis, "ended")  # no rq job, no claim: e.g. written by another producer's era
    with pytest.raises(DuplicateExecution):
        producer.submit(_request("ended"))
    assert producer.rq_queue().count == 0


def test_concurrent_submits_of_one_id_enqueue_once(producer):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def attempt():
        barrier.wait()
        try:
            producer.submit(_request("race"))
            results.append("ok")
        except DuplicateExecution:
            results.append("dup")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["dup"] * 7 + ["ok"]
    assert producer.rq_queue().get_job_ids() == ["race"]


def test_failed_enqueue_releases_the_claims(producer, fake_redis, monkeypatch):
    def broken(*args, **kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(producer.rq_queue(), "enqueue_many", broken)
    monkeypatch.setattr(JobWriter, "write", broken)
    with pytest.raises(redis.ConnectionError):
        producer.submit_many([_request("retry-a"), _request("retry-b")])
    assert not fake_redis.exists("p:exec:retry-a:claimed", "p:exec:retry-b:claimed")
    monkeypatch.undo()
    assert producer.submit_many([_request("retry-a"), _request("retry-b")]) == ["retry-a", "retry-b"]


def test_submit_claims_and_writes_in_one_script(producer, fake_redis, monkeypatch):
    """All of it or none of it: a submit whose script never ran leaves no claim behind."""
    real = producer._claim_and_write_script
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(producer, "_claim_and_write_script", broken)
    with pytest.raises(redis.ConnectionError):
        producer.submit(_request("retry-me"))
    assert calls and not fake_redis.exists("p:exec:retry-me:claimed", "rq:job:retry-me")
    monkeypatch.setattr(producer, "_claim_and_write_script", real)
    assert producer.submit(_request("retry-me")) == "retry-me"
    assert not fake_redis.exists("p:exec:retry-me:claimed")  # the rq job keeps the id taken
    assert producer.rq_queue().get_job_ids() == ["retry-me"]
    with pytest.raises(DuplicateExecution):
        producer.submit(_request("retry-me"))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"engine": {}}, "engine.image"),
        ({"engine": {"image": "busybox"}, "resources": {"memory": "1k"}}, "resources.memory"),
        ({"engine": {"image": "busybox"}, "timout_seconds": 5}, "timout_seconds"),
        ({"execution_id": "no spaces", "engine": {"image": "busybox"}}, "execution_id"),
    ],
)
def test_invalid_request_names_the_field_and_enqueues_nothing(producer, fake_redis, request_, field):
    with pytest.raises(InvalidRequest) as err:
        producer.submit(request_)
    assert str(err.value).startswith(f"{field}: ")
    assert isinstance(err.value, ProducerError)
    assert fake_redis.keys("*") == []


def test_invalid_json_is_an_invalid_request(producer, fake_redis):
    with pytest.raises(InvalidRequest, match="not a JSON document"):
        producer.submit("{not json")
    assert fake_redis.keys("*") == []


# -- submit_many -------------------------------------------------------------


def test_submit_many_enqueues_all_in_order(producer, fake_redis):
    pubsub = _subscribe(fake_redis, "p:events")
    ids = producer.submit_many([_request(f"m{i}") for i in range(50)])
    assert ids == [f"m{i}" for i in range(50)]
    assert producer.rq_queue().get_job_ids() == ids
    job = _job(producer, "m7")
    assert job.func_name == JOB_FUNCTION
    assert job.meta["status"] == "queued"
    assert [Event.model_validate_json(_next_data(pubsub)).execution_id for _ in ids] == ids


def test_submit_many_is_all_or_nothing_on_duplicates(producer, fake_redis):
    producer.submit(_request("taken"))
    with pytest.raises(DuplicateExecution) as err:
        producer.submit_many([_request("a"), _request("taken"), _request("b")])
    assert err.value.execution_ids == ["taken"]
    assert producer.rq_queue().get_job_ids() == ["taken"]
    # The claims of the refused batch were released: the same ids can go again.
    assert producer.submit_many([_request("a"), _request("b")]) == ["a", "b"]


def test_submit_many_refuses_an_id_twice_in_one_batch(producer, fake_redis):
    with pytest.raises(DuplicateExecution):
        producer.submit_many([_request("twice"), _request("twice")])
    assert fake_redis.keys("*") == []


def test_submit_many_names_the_index_of_an_invalid_request(producer, fake_redis):
    with pytest.raises(InvalidRequest, match=r"^requests\[1\]: engine.image: "):
        producer.submit_many([_request("ok"), {"engine": {}}])
    assert fake_redis.keys("*") == []


# -- wait --------------------------------------------------------------------


def test_wait_returns_an_outcome_written_before(producer, fake_redis):
    written = _write_outcome(fake_redis, "done", ExecutionStatus.FAILED, exit_code=3)
    assert producer.wait("done", timeout=1) == written
    # Non-destructive: the next waiter gets it too.
    assert producer.wait("done", timeout=1) == written
    assert fake_redis.llen("p:exec:done:outcome") == 1


def test_wait_returns_an_outcome_written_after(producer, fake_redis):
    producer.submit(_request("later-done"))
    timer = threading.Timer(0.3, _write_outcome, (fake_redis, "later-done"))
    timer.start()
    started = time.monotonic()
    outcome = producer.wait("later-done", timeout=60)  # returning it (not TimeoutError) is the wake-up
    assert outcome.status is ExecutionStatus.SUCCEEDED
    assert time.monotonic() - started > 0.25  # it did wait for the outcome to be written
    assert fake_redis.llen("p:exec:later-done:outcome") == 1


def test_wait_unknown_id_fails_at_once(producer, monkeypatch):
    # With the vanish grace out of reach, the only ExecutionNotFound that can end this wait
    # (rather than its TimeoutError) is the one raised before it blocks at all.
    monkeypatch.setattr(waiting_module, "VANISH_GRACE_SECONDS", 3600)
    with pytest.raises(ExecutionNotFound) as raised:
        producer.wait("nobody", timeout=10)
    assert "vanished" not in str(raised.value)


def test_wait_times_out(producer):
    producer.submit(_request("slow"))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="after 0.3s"):
        producer.wait("slow", timeout=0.3)
    assert time.monotonic() - started > 0.25  # not before its time


# What a worker still running an execution writes into its job after Redis lost it: its state
# (worker.execution.channels.set_state), rq's last_heartbeat (until rq deletes the key again),
# an adopter's worker_name (worker.faults.settle.adopt). None of them makes it a job again.
PHANTOM_FIELDS = [None, "meta", "last_heartbeat", "worker_name"]


@pytest.mark.parametrize("phantom", PHANTOM_FIELDS)
def test_wait_notices_a_job_that_vanishes(producer, fake_redis, monkeypatch, phantom):
    monkeypatch.setattr(waiting_module, "VANISH_GRACE_SECONDS", 0.2)
    producer.submit(_request("doomed"))

    def lose_it() -> None:
        fake_redis.delete("rq:job:doomed")
        if phantom:
            fake_redis.hset("rq:job:doomed", phantom, "x")

    threading.Timer(0.2, lose_it).start()
    with pytest.raises(ExecutionNotFound, match="vanished"):
        producer.wait("doomed", timeout=5)
    if phantom:  # a follower ends too, saying so (with nothing left at all, logs() refuses the id at once)
        with pytest.raises(ExecutionVanished):
            list(producer.logs("doomed", follow=True))


def test_wait_retries_when_redis_drops(producer, fake_redis, monkeypatch):
    producer.submit(_request("flaky"))
    real_blmove = producer._blocking.blmove
    calls = {"n": 0}

    def flaky_blmove(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise redis.ConnectionError("connection reset")
        _write_outcome(fake_redis, "flaky")
        return real_blmove(*args, **kwargs)

    monkeypatch.setattr(producer._blocking, "blmove", flaky_blmove)
    assert producer.wait("flaky", timeout=10).status is ExecutionStatus.SUCCEEDED
    assert calls["n"] == 3


# -- cancel (paths without Lua) ----------------------------------------------


def test_cancel_unknown_id(producer):
    with pytest.raises(ExecutionNotFound):
        producer.cancel("nobody")


def test_cancel_of_an_ended_execution(producer, fake_redis):
    producer.submit(_request("finished"))
    _write_outcome(fake_redis, "finished")
    with pytest.raises(ExecutionAlreadyFinished, match="succeeded"):
        producer.cancel("finished")
    assert not fake_redis.exists("p:exec:finished:cancel")


def test_cancel_of_a_running_execution_signals_the_worker(producer, fake_redis):
    producer.submit(_request("running"))
    _job(producer, "running").set_status(JobStatus.STARTED)
    pubsub = _subscribe(fake_redis, "p:exec:running:control")
    assert producer.cancel("running") == "signalled"
    assert _next_data(pubsub) == CANCEL_MESSAGE.encode()
    assert fake_redis.get("p:exec:running:cancel") == b"1"
    assert 0 < fake_redis.ttl("p:exec:running:cancel") <= producer.retention_seconds
    assert not fake_redis.exists("p:exec:running:outcome")  # the worker writes it when it has stopped
    assert _job(producer, "running").get_status() == JobStatus.STARTED


# -- status and ls -----------------------------------------------------------


def test_status_of_a_queued_execution(producer):
    producer.submit(_request("st"))
    view = producer.status("st")
    assert (view.state, view.image, view.queue, view.outcome) == (ExecutionState.QUEUED, "busybox:latest", "q", None)
    assert view.enqueued_at is not None


def test_status_follows_the_worker_meta_then_the_outcome(producer, fake_redis):
    producer.submit(_request("st2"))
    job = _job(producer, "st2")
    job.set_status(JobStatus.STARTED)
    job.meta.update(status="running", worker="node-a", container_id="c0ffee")
    job.save_meta()
    view = producer.status("st2")
    assert (view.state, view.worker, view.container_id) == (ExecutionState.RUNNING, "node-a", "c0ffee")
    _write_outcome(fake_redis, "st2", ExecutionStatus.FAILED, exit_code=1)
    view = producer.status("st2")
    assert view.state is ExecutionState.FAILED
    assert view.outcome.exit_code == 1


def test_a_taken_execution_is_not_running_before_its_worker_says_so(producer):
    """rq marks the job started before the worker's first meta write: that is the worker
    preparing (pulling), not a running container (a test that killed Redis on "running"
    hit the worker before its container existed)."""
    producer.submit(_request("st3"))
    job = _job(producer, "st3")
    job.set_status(JobStatus.STARTED)
    assert producer.status("st3").state is ExecutionState.PULLING
    job.meta.update(status="running")
    job.save_meta()
    assert producer.status("st3").state is ExecutionState.RUNNING


def test_status_unknown(producer):
    with pytest.raises(ExecutionNotFound):
        producer.status("nobody")


def test_status_of_an_outcome_without_job(producer, fake_redis):
    _write_outcome(fake_redis, "orphan", ExecutionStatus.FAILED, exit_code=2)
    assert producer.status("orphan").state is ExecutionState.FAILED


def test_rq_cancel_without_outcome_reads_as_cancelled(producer):
    producer.submit(_request("rq-cancelled"))
    job = _job(producer, "rq-cancelled")
    job.set_status(JobStatus.CANCELED)
    assert build_view("rq-cancelled", job, None).state is ExecutionState.CANCELLED


def test_list_recent_newest_first_across_registries(producer, fake_redis):
    producer.submit(_request("old"))
    time.sleep(0.01)
    producer.submit(_request("sched"), delay=timedelta(hours=1))
    time.sleep(0.01)
    producer.submit(_request("new"))
    _write_outcome(fake_redis, "old", ExecutionStatus.SUCCEEDED)
    views = producer.list_recent()
    assert [v.execution_id for v in views] == ["new", "sched", "old"]
    assert [v.state.value for v in views] == ["queued", "scheduled", "succeeded"]
    assert [v.execution_id for v in producer.list_recent(limit=1)] == ["new"]


@pytest.mark.parametrize("method", ["status", "cancel", "wait", "logs"])
def test_a_malformed_id_never_reaches_another_execution(producer, method):
    producer.submit(_request("a"))
    # rq would read "a:b" as job "a"; the producer refuses it instead of answering for "a".
    with pytest.raises(ExecutionNotFound, match="not an execution id"):
        getattr(producer, method)("a:b")
