"""The rq job function and the rq worker class, on fakeredis with a fake executor (no Docker)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from rq import Queue
from rq.command import handle_command
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from schemas import (
    CANCEL_MESSAGE,
    Event,
    ExecutionRequest,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    Keys,
    LogBatch,
    Outcome,
)
from schemas.compact_log import read_compact_log
from worker.service import runtime as runtime_module
from worker.executor import (
    ExecutionAlreadyFinished,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ImagePullError,
    MountNotAllowed,
)
from worker.executor.output import OutputLog
from worker.execution.logs import LOG_BATCH_ENTRIES
from worker.execution.run import ExecutionRun, ExecutionStopped
from worker.service.worker import DockrqWorker
from worker.service.runtime import WorkerRuntime
from worker.config.settings import WorkerSettings

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")

PREFIX = "t"
KEYS = Keys(PREFIX)
SECRET = "hunter2-secret-value"


@dataclass
class Info:
    execution_id: str
    state: ExecutionState
    container_id: str | None


class FakeExecutor:
    """The executor's API without Docker: output from a script, results on demand.

    ``lines`` are written as stdout; ``finish`` says whether the "container"
    exits by itself right after (with ``exit_code``) or runs until cancelled.
    """

    def __init__(self, lines=(), exit_code=0, finish=True, start_error=None, start_delay=0.0, stop_delay=0.05):
        self.lines, self.exit_code, self.finish, self.start_error = list(lines), exit_code, finish, start_error
        self.start_delay, self.stop_delay = start_delay, stop_delay
        self.calls: list[tuple[str, Any]] = []
        self.done: dict[str, Future[ExecutionResult]] = {}
        self.output: dict[str, OutputLog] = {}
        self.forgotten: list[str] = []
        self.graces: list[float | None] = []  # grace_seconds of each cancel

    def start(self, request):
        self.calls.append(("start", request.execution_id))
        time.sleep(self.start_delay)
        eid = request.execution_id
        if eid in self.done:
            raise ExecutionAlreadyFinished(eid) if self.done[eid].done() else ExecutionAlreadyStarted(eid)
        self.done[eid], self.output[eid] = Future(), OutputLog(request.output_limit_bytes)
        if self.start_error is not None:
            self._end(eid, ExecutionStatus.ERROR, error_code=self.start_error.code, error_msg=str(self.start_error))
            raise self.start_error
        for line in self.lines:
            self.output[eid].append("stdout", f"{line}\n".encode())
        if self.finish:
            status = ExecutionStatus.SUCCEEDED if self.exit_code == 0 else ExecutionStatus.FAILED
            threading.Timer(0.05, self._end, args=(eid, status), kwargs={"exit_code": self.exit_code}).start()

    def _end(self, eid, status, **fields):
        self.output[eid].close()
        if not self.done[eid].done():
            self.done[eid].set_result(
                ExecutionResult(execution_id=eid, status=status, container_id="c0ffee", stdout="", **fields)
            )

    def wait(self, eid):
        future: Future[ExecutionResult] = Future()
        if eid not in self.done:
            future.set_exception(ExecutionNotFound(eid))
        else:
            self.done[eid].add_done_callback(lambda f: future.set_result(f.result()))
        return future

    def cancel(self, eid, grace_seconds=None):
        self.calls.append(("cancel", eid))
        self.graces.append(grace_seconds)
        if eid not in self.done:
            raise ExecutionNotFound(eid)
        if self.done[eid].done():
            raise ExecutionAlreadyFinished(eid)
        threading.Timer(self.stop_delay, self._end, args=(eid, ExecutionStatus.CANCELLED), kwargs={"exit_code": 143}).start()

    def get_log_stream(self, request):
        from worker.executor.output import LogStream

        if request.execution_id not in self.output:
            raise ExecutionNotFound(request.execution_id)
        return LogStream(self.output[request.execution_id], tail=request.tail, follow=request.follow)

    def info(self, eid):
        return Info(eid, ExecutionState.RUNNING, "c0ffee")

    def forget(self, eid):
        self.forgotten.append(eid)

    def started(self):
        return [eid for call, eid in self.calls if call == "start"]


def settings(**kw):
    return WorkerSettings(prefix=PREFIX, executor_id="node-t", retention_seconds=60, stop_grace_seconds=1, **kw)


@pytest.fixture
def make_runtime(fake_redis):
    made = []

    def make(executor):
        rt = WorkerRuntime(settings(), executor=executor, connection=fake_redis)
        rt.heartbeat_interval = 0.05
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def request(eid="e1", cmd=("echo", "hi"), **kw):
    return {"execution_id": eid, "engine": {"image": "busybox", "cmd": list(cmd), "env": {"TOKEN": SECRET}}, **kw}


def outcome(redis, eid="e1"):
    raw = redis.lrange(KEYS.outcome(eid), 0, -1)
    assert len(raw) == 1, raw
    return Outcome.model_validate_json(raw[0])


def log_batches(redis, eid="e1"):
    """The replay: the stream's batches, or those of the compact log that replaced it once the log ended."""
    stream = [LogBatch.model_validate_json(f[b"batch"]) for _, f in redis.xrange(KEYS.log_stream(eid))]
    return stream or read_compact_log(redis, KEYS.log_compact(eid)) or []


def events_of(pubsub, quiet=0.3):
    seen, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < quiet:
        m = pubsub.get_message(timeout=0.02)
        if m is not None and m["type"] == "message":
            seen.append(Event.model_validate_json(m["data"]).status.value)
            idle_since = time.monotonic()
    return seen


@pytest.fixture
def events(fake_redis):
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEYS.events)
    yield pubsub
    pubsub.close()


# -- the job function ------------------------------------------------------------


def test_success_ships_logs_then_eof_then_outcome(fake_redis, make_runtime, events):
    ex = FakeExecutor(lines=[f"line {i}" for i in range(1234)])
    summary = ExecutionRun(make_runtime(ex), None, request()).run()

    assert summary == {"execution_id": "e1", "status": "succeeded", "exit_code": 0}
    assert outcome(fake_redis).status == ExecutionStatus.SUCCEEDED
    batches = log_batches(fake_redis)
    assert batches[-1].eof and batches[-1].seq == 1234
    seq = 0
    for batch in batches[:-1]:
        assert batch.seq == seq and 0 < len(batch.entries) <= LOG_BATCH_ENTRIES
        seq += len(batch.entries)
    assert [e.data for b in batches for e in b.entries] == [f"line {i}\n" for i in range(1234)]
    assert events_of(events) == ["pulling", "running", "succeeded"]
    assert ex.forgotten == ["e1"]


def test_non_zero_exit_is_a_failed_outcome_not_an_error(fake_redis, make_runtime):
    summary = ExecutionRun(make_runtime(FakeExecutor(exit_code=3)), None, request()).run()
    assert summary["status"] == "failed" and summary["exit_code"] == 3
    assert outcome(fake_redis).error is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"execution_id": "e1", "engine": {"cmd": ["true"]}}, "engine.image"),
        ({"execution_id": "e1", "engine": {"image": "x"}, "timout_seconds": 5}, "timout_seconds"),
        ({"execution_id": "e1", "engine": {"image": "x"}, "resources": {"cpus": -1}}, "resources.cpus"),
        ('{"execution_id": "e1", "engine": {"image": "x"}, "network": "host"}', "network"),
        ("not json at all", "request"),
        (["a", "list"], "request"),
    ],
)
def test_invalid_request_is_rejected_naming_the_field(fake_redis, make_runtime, events, payload, field):
    ex = FakeExecutor()
    job = _job(fake_redis, payload, job_id="e1")
    summary = ExecutionRun(make_runtime(ex), job, payload).run()

    assert summary["status"] == "rejected"
    got = outcome(fake_redis)
    assert got.status == ExecutionStatus.REJECTED and got.error.code == "invalid_request"
    assert got.error.message.startswith(field), got.error.message
    assert ex.calls == []  # never reached Docker
    assert log_batches(fake_redis)[-1].eof  # followers are not left hanging
    assert events_of(events) == ["rejected"]


def test_execution_id_must_match_the_rq_job(fake_redis, make_runtime):
    job = _job(fake_redis, request("other"), job_id="e1")
    ExecutionRun(make_runtime(FakeExecutor()), job, request("other")).run()
    assert "rq job id" in outcome(fake_redis, "e1").error.message


def test_missing_execution_id_defaults_to_the_rq_job_id(fake_redis, make_runtime):
    payload = {"engine": {"image": "busybox"}}
    ex = FakeExecutor()
    ExecutionRun(make_runtime(ex), _job(fake_redis, payload, job_id="e7"), payload).run()
    assert ex.started() == ["e7"] and outcome(fake_redis, "e7").status == ExecutionStatus.SUCCEEDED


def test_policy_rejection_by_the_executor(fake_redis, make_runtime):
    class Refusing(FakeExecutor):
        def start(self, request):
            raise MountNotAllowed("mounts[0].source: /etc is outside the allowed roots")

    ExecutionRun(make_runtime(Refusing()), None, request()).run()
    got = outcome(fake_redis)
    assert (got.status, got.error.code) == (ExecutionStatus.REJECTED, "mount_not_allowed")


def test_start_error_is_an_error_outcome_with_its_code(fake_redis, make_runtime):
    ex = FakeExecutor(start_error=ImagePullError("pull access denied for nope"))
    assert ExecutionRun(make_runtime(ex), None, request()).run()["status"] == "error"
    got = outcome(fake_redis)
    assert (got.error.code, got.error.message) == ("image_pull", "pull access denied for nope")


def test_cancel_flag_at_start_cancels_without_a_container(fake_redis, make_runtime, events):
    fake_redis.set(KEYS.cancel_flag("e1"), 1)
    ex = FakeExecutor()
    assert ExecutionRun(make_runtime(ex), None, request()).run()["status"] == "cancelled"
    assert ex.calls == []
    assert outcome(fake_redis).error.code == "cancelled"
    assert events_of(events) == ["cancelled"]


def test_an_ended_execution_is_not_run_again(fake_redis, make_runtime, events):
    first = Outcome.failure("e1", ExecutionStatus.LOST, "lost", "worker died")
    fake_redis.rpush(KEYS.outcome("e1"), first.model_dump_json())
    ex = FakeExecutor()
    assert ExecutionRun(make_runtime(ex), None, request()).run()["status"] == "lost"
    assert ex.calls == [] and events_of(events) == []


def test_cancel_on_the_control_channel_stops_the_container(fake_redis, make_runtime):
    ex = FakeExecutor(lines=["working"], finish=False)
    rt = make_runtime(ex)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(ExecutionRun(rt, None, request()).run()))
    runner.start()
    _wait_for(lambda: fake_redis.exists(KEYS.log_stream("e1")))
    fake_redis.publish(KEYS.control_channel("e1"), CANCEL_MESSAGE)
    runner.join(60)
    assert result["status"] == "cancelled"
    assert ("cancel", "e1") in ex.calls
    assert set(ex.graces) == {1}  # the worker's stop grace (DOCKRQ_STOP_GRACE_SECONDS), not a default
    got = outcome(fake_redis)
    assert (got.error.code, got.error.message) == ("cancelled", "cancelled by request")


def test_cancel_flag_seen_while_running(fake_redis, make_runtime):
    # A cancel whose control message was missed (e.g. a reconnect) is still seen on the next heartbeat.
    ex = FakeExecutor(finish=False)
    rt = make_runtime(ex)
    threading.Timer(0.3, fake_redis.set, args=(KEYS.cancel_flag("e1"), 1)).start()
    assert ExecutionRun(rt, None, request()).run()["status"] == "cancelled"


def test_cancel_during_start_is_applied_once_started(fake_redis, make_runtime):
    ex = FakeExecutor(finish=False, start_delay=0.3)
    rt = make_runtime(ex)
    threading.Timer(0.1, rt.cancel, args=("e1", "cancelled by request")).start()
    assert ExecutionRun(rt, None, request()).run()["status"] == "cancelled"


def test_outcome_given_up_after_the_redis_budget_is_left_to_the_worker(fake_redis, monkeypatch, caplog, virtual_time):
    # Redis unreachable at the end for longer than outcome_retry_seconds: the job function
    # raises the Redis error after one try of the budget, not a second one through the
    # interruption path, and leaves its outcome to rq's worker, which writes it once Redis is back.
    import redis

    import schemas.connections
    from worker.execution.channels import ExecutionChannels

    clock = virtual_time(schemas.connections)  # the end's retries wait on virtual time: exact, whatever the load
    attempts = []

    def down(self, payload):
        attempts.append(clock.monotonic())
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(ExecutionChannels, "_store_outcome", down)
    monkeypatch.setattr(ExecutionChannels, "_ship", lambda self, batch: down(self, batch))
    ex = FakeExecutor(exit_code=4)
    rt = WorkerRuntime(settings(outcome_retry_seconds=0.5), executor=ex, connection=fake_redis)
    began = clock.monotonic()
    try:
        with pytest.raises(redis.ConnectionError):
            ExecutionRun(rt, None, request()).run()
    finally:
        rt.close()
    assert len(attempts) > 1
    assert attempts[-1] - attempts[0] == pytest.approx(0.5)  # eof and outcome: one budget in all, not two (1.0)
    assert clock.monotonic() - began == pytest.approx(0.5)  # and no second one through the interruption path
    assert ex.calls == [("start", "e1")]  # nothing cancelled: the container had ended by itself
    assert ex.forgotten == ["e1"]
    assert fake_redis.llen(KEYS.outcome("e1")) == 0
    assert "its failed outcome is not written" in caplog.text
    assert "interrupted" not in caplog.text
    kept = rt.take_unwritten("e1")  # for the worker to write once Redis is back
    assert (kept.status, kept.exit_code) == (ExecutionStatus.FAILED, 4)
    assert rt.take_unwritten("e1") is None


def test_rq_timeout_stops_the_container_and_writes_timed_out(fake_redis, make_runtime):
    ex = FakeExecutor(finish=False)
    with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(1, JobTimeoutException):
        ExecutionRun(make_runtime(ex), None, request()).run()
    assert ("cancel", "e1") in ex.calls
    got = outcome(fake_redis)
    assert (got.status, got.error.code) == (ExecutionStatus.TIMED_OUT, "job_timeout")
    assert log_batches(fake_redis)[-1].eof


def test_cold_shutdown_stops_the_container_writes_cancelled_and_exits(fake_redis, make_runtime):
    # rq's second SIGTERM raises SystemExit in the main thread, inside the job.
    def force_stop(signum, frame):
        raise SystemExit()

    previous = signal.signal(signal.SIGUSR1, force_stop)
    try:
        ex = FakeExecutor(finish=False)
        threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(SystemExit):
            ExecutionRun(make_runtime(ex), None, request()).run()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    got = outcome(fake_redis)
    assert (got.status, got.error.code) == (ExecutionStatus.CANCELLED, "worker_shutdown")
    assert got.result is not None and got.result.container_id == "c0ffee"


def test_sigterm_while_finishing_is_deferred_not_lost(fake_redis, make_runtime, caplog):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(time.monotonic()))
    try:
        ex = FakeExecutor(finish=False, stop_delay=0.6)
        threading.Timer(1.2, os.kill, args=(os.getpid(), signal.SIGTERM)).start()  # during the stop
        with pytest.raises(JobTimeoutException), UnixSignalDeathPenalty(1, JobTimeoutException):
            ExecutionRun(make_runtime(ex), None, request()).run()
        finished = time.monotonic()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert outcome(fake_redis).status == ExecutionStatus.TIMED_OUT
    assert len(received) == 1 and received[0] <= finished  # delivered once, after the outcome
    assert "delivering SIGTERM received while finishing an execution" in caplog.text


def test_env_values_never_reach_the_logs(fake_redis, make_runtime, caplog):
    caplog.set_level("DEBUG")
    ExecutionRun(make_runtime(FakeExecutor()), None, request()).run()
    assert SECRET not in caplog.text


# -- the rq worker class ----------------------------------------------------------


@pytest.fixture
def installed(fake_redis, make_runtime):
    """A runtime with a fake executor installed as the process's one."""
    previous = runtime_module._current

    def install(executor):
        return runtime_module.install(make_runtime(executor))

    yield install
    runtime_module._current = previous


def _job(redis, payload, job_id, queue="q", **kw) -> Job:
    return Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        "worker.jobs.execute", args=(payload,), job_id=job_id, meta={"image": "busybox", "status": "queued"}, **kw
    )


def _wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_worker_runs_jobs_and_mirrors_meta(fake_redis, installed, caplog):
    caplog.set_level("DEBUG")
    runtime = installed(FakeExecutor(lines=["hello"]))
    _job(fake_redis, request("a1"), "a1")
    _job(fake_redis, {"engine": {}}, "a2")
    DockrqWorker(["q"], connection=fake_redis, name="w-unit").work(burst=True)

    a1 = Job.fetch("a1", connection=fake_redis, serializer=JSONSerializer)
    assert a1.get_status() == JobStatus.FINISHED
    # one copy of the result (issue 14): the outcome; rq keeps no results stream for it
    assert outcome(fake_redis, "a1").summary() == {"execution_id": "a1", "status": "succeeded", "exit_code": 0}
    assert a1.return_value() is None and not fake_redis.exists("rq:results:a1")
    times = {k: a1.meta.pop(k) for k in ("pulling_at", "running_at")}  # epoch seconds: pulling, then running
    assert times["pulling_at"] <= times["running_at"]
    assert a1.meta == {
        "image": "busybox", "status": "succeeded", "execution_id": "a1", "worker": "w-unit", "container_id": "c0ffee",
        "node": "node-t", "exit_code": 0,  # for the dashboard's rows (worker/dashboard.py)
    }
    a2 = Job.fetch("a2", connection=fake_redis, serializer=JSONSerializer)
    assert a2.get_status() == JobStatus.FINISHED and a2.meta["status"] == "rejected"
    assert outcome(fake_redis, "a2").error.message.startswith("engine.image")
    assert SECRET not in caplog.text  # rq does not log descriptions/arguments


def test_worker_heartbeats_during_a_long_execution(fake_redis, installed, monkeypatch):
    ex = FakeExecutor(finish=False)
    installed(ex)
    beats = []
    monkeypatch.setattr(DockrqWorker, "maintain_heartbeats", lambda self, job, execution: beats.append(job.id))
    _job(fake_redis, request("h1"), "h1")
    threading.Timer(0.5, lambda: ex._end("h1", ExecutionStatus.SUCCEEDED, exit_code=0)).start()
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)
    assert len(beats) >= 3 and set(beats) == {"h1"}


def test_worker_heartbeats_refresh_rq_registries(fake_redis, installed, caplog):
    from rq.registry import StartedJobRegistry

    ex = FakeExecutor(finish=False)
    installed(ex)
    _job(fake_redis, request("h2"), "h2")
    scores = []

    def watch():
        _wait_for(lambda: ex.started() == ["h2"])
        registry = StartedJobRegistry("q", connection=fake_redis)
        for _ in range(2):
            scores.append(max(score for _, score in fake_redis.zrange(registry.key, 0, -1, withscores=True)))
            time.sleep(1.1)  # scores have a one-second resolution
        ex._end("h2", ExecutionStatus.SUCCEEDED, exit_code=0)

    threading.Thread(target=watch, daemon=True).start()
    DockrqWorker(["q"], connection=fake_redis).work(burst=True)
    assert scores[1] > scores[0]  # the execution's expiry moved on while it ran
    assert "heartbeat failed" not in caplog.text


def test_rq_stop_job_command_cancels_the_container(fake_redis, installed, caplog):
    ex = FakeExecutor(finish=False)
    installed(ex)
    _job(fake_redis, request("s1"), "s1")
    worker = DockrqWorker(["q"], connection=fake_redis)

    def stop_when_running():
        _wait_for(lambda: ex.started() == ["s1"])
        handle_command(worker, {"command": "stop-job", "job_id": "s1"})

    threading.Thread(target=stop_when_running, daemon=True).start()
    worker.work(burst=True)
    assert Job.fetch("s1", connection=fake_redis, serializer=JSONSerializer).get_status() == JobStatus.STOPPED
    got = outcome(fake_redis, "s1")
    assert (got.status, got.error.code) == (ExecutionStatus.CANCELLED, "stopped")
    # rq logs the stopped job's exception with its arguments attached: they are hidden
    with_args = [r for r in caplog.records if hasattr(r, "arguments")]
    assert with_args and {r.arguments for r in with_args} == {"<hidden>"}


def test_stopped_execution_raises_for_rq(fake_redis, make_runtime):
    ex = FakeExecutor(finish=False)
    rt = make_runtime(ex)
    run = ExecutionRun(rt, None, request())
    threading.Timer(0.3, rt.stop_by_rq, args=("e1",)).start()
    with pytest.raises(ExecutionStopped):
        run.run()
    assert outcome(fake_redis).status == ExecutionStatus.CANCELLED


def test_request_round_trips_through_the_json_serializer(fake_redis):
    req = ExecutionRequest.model_validate(request())
    job = _job(fake_redis, req.model_dump(mode="json"), "e1")
    fetched = Job.fetch(job.id, connection=fake_redis, serializer=JSONSerializer)
    assert ExecutionRequest.model_validate(fetched.args[0]) == req
    assert json.loads(JSONSerializer.dumps(fetched.args[0]))["engine"]["env"] == {"TOKEN": SECRET}
