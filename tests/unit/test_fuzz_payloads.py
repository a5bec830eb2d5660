"""Random and malformed payloads thrown at the job function, the rq worker and the producer.

Whatever arrives -- wrong types, huge strings, NUL bytes, odd ids, unknown
fields, bytes that are no JSON, deep nesting, lists, None -- the answer is a
validation error naming the field (producer) or a ``rejected`` outcome (worker):
never a crash, never a hang, never a container. fakeredis (with Lua for the
outcome script), and an executor that records what it would have started.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import Future
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from producer import DuplicateExecution, ExecutionNotFound, InvalidRequest, Producer
from schemas import ExecutionRequest, ExecutionResult, ExecutionStatus, Keys, Outcome
from worker.service import runtime as runtime_module
from worker.executor import ExecutionNotFound as ExecutorNotFound
from worker.execution.run import ExecutionRun
from worker.service.worker import DockrqWorker
from worker.service.runtime import WorkerRuntime
from worker.config.settings import WorkerSettings

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")
pytestmark = pytest.mark.timeout(120)

KEYS = Keys("f")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A rejection names what is wrong first: "engine.image: ...", "request: ...", "rq job: ...".
NAMES_A_FIELD = re.compile(r"^\S.{0,400}?: ")
REJECTION_CODES = {"invalid_request", "policy_violation", "mount_not_allowed"}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


# -- strategies -----------------------------------------------------------------------------

_odd_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    st.sampled_from(["", "\x00", "a\x00b", "../../etc/passwd", "a:b", "a b", "x" * 65, "é", "🙂", "-", "_", "\n"]),
    st.integers(10, 300_000).map(lambda n: "x" * n),  # huge
)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    _odd_text,
)
_json_value = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_odd_text, inner, max_size=5), max_leaves=25
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]}
    return value


_FIELDS = {
    "": ["execution_id", "job_id", "engine", "resources", "mounts", "network", "timeout_seconds",
         "output_limit_bytes", "pull_policy", "retries"],
    "engine": ["image", "entrypoint", "cmd", "env", "working_dir"],
    "resources": ["cpus", "memory", "pids", "gpus"],
}
_PLAUSIBLE = {
    "execution_id": _odd_text,
    "image": st.sampled_from(["busybox", "dockrq-test/busybox:latest", "", " ", "a\x00b", "x" * 600]),
    "cmd": st.lists(_odd_text, max_size=4) | st.lists(_scalar, max_size=4),
    "env": st.dictionaries(_odd_text, _odd_text | _scalar, max_size=4),
    "memory": st.sampled_from(["256m", "1g", "9g", "lots", "-1", "1e99", 0, -5, 10**30, "6m", 2**40]),
    "cpus": st.sampled_from([0, -1, 0.001, 0.5, 1e9, float("nan"), float("inf"), "2", True]),
    "pids": st.sampled_from([0, -1, 1, 100, 10**9, "100", None]),
    "network": st.sampled_from(["none", "bridge", "host", "container:x", None, 1]),
    "timeout_seconds": st.sampled_from([0, -1, 1, 1e12, float("nan"), "60", None]),
    "output_limit_bytes": st.sampled_from([0, -1, 2**40, "1m", 1024]),
    "mounts": st.sampled_from([[{"source": "/etc", "target": "/x"}], [{"source": "rel", "target": "/x"}], [1], {}]),
}
VALID = {
    "execution_id": "fz-ok",
    "engine": {"image": "busybox", "cmd": ["sh", "-c", "echo hi"], "env": {"TOKEN": "value"}},
    "resources": {"memory": "256m"},
    "timeout_seconds": 30,
}


@st.composite
def _mutated_request(draw: st.DrawFn) -> Any:
    """A valid request with one to three fields replaced or added (unknown names included)."""
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(_FIELDS)))
        target = data if section == "" else data.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(_FIELDS[section]) | _odd_text)
        target[key] = draw(_PLAUSIBLE.get(key, _json_value) if draw(st.booleans()) else _json_value)
    return data


payloads = st.one_of(
    _json_value,
    _mutated_request(),
    _mutated_request(),
    _mutated_request().map(json.dumps),
    _mutated_request().map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.text(max_size=200),
    st.integers(100, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(100, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(10, 500).map(lambda n: {**VALID, "engine": {**VALID["engine"], "env": {"X": _nested(n)}}}),
    st.integers(10, 500).map(_nested),
    st.lists(_mutated_request(), max_size=3),
    st.just(None),
)


# -- a runtime whose executor records instead of starting ----------------------------------------


class RecordingExecutor:
    def __init__(self) -> None:
        self.started: list[ExecutionRequest] = []

    def start(self, request: ExecutionRequest) -> None:
        assert isinstance(request, ExecutionRequest)
        self.started.append(request)

    def wait(self, execution_id: str) -> Future:
        future: Future = Future()
        future.set_result(ExecutionResult(execution_id=execution_id, status=ExecutionStatus.SUCCEEDED, exit_code=0))
        return future

    def get_log_stream(self, request):
        raise ExecutorNotFound(request.execution_id)

    def info(self, execution_id):
        raise ExecutorNotFound(execution_id)

    def cancel(self, execution_id, grace_seconds=None):
        raise ExecutorNotFound(execution_id)

    def forget(self, execution_id):
        pass


@pytest.fixture(scope="module")
def world():
    """One fake Redis and runtime for every example (flushed in between): fast enough for hundreds."""
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeRedis(server=server)
    executor = RecordingExecutor()
    settings_ = WorkerSettings.load({}, prefix="f", executor_id="fuzz", retention_seconds=60)
    rt = WorkerRuntime(settings_, executor=executor, connection=redis)
    yield redis, rt, executor
    rt.close()
    redis.close()


def _check_rejection(outcome: Outcome) -> None:
    assert outcome.status == ExecutionStatus.REJECTED and outcome.result is None
    assert outcome.error is not None and outcome.error.code in REJECTION_CODES
    assert NAMES_A_FIELD.match(outcome.error.message), outcome.error.message
    assert len(outcome.error.message) < 8000


# -- the job function ------------------------------------------------------------------------------


@FUZZ
@given(payload=payloads)
def test_job_function_rejects_whatever_is_not_a_valid_request(world, payload):
    redis, rt, executor = world
    redis.flushall()
    executor.started.clear()

    summary = ExecutionRun(rt, None, payload).run()  # no exception, whatever the payload

    assert summary["status"] in ("rejected", "succeeded")
    outcome_keys = [k.decode() for k in redis.keys("f:exec:*:outcome")]
    if summary["status"] == "succeeded":  # the payload happened to be a valid, allowed request
        assert [r.execution_id for r in executor.started] == [summary["execution_id"]]
        return
    assert executor.started == []  # nothing reached the executor
    if summary["execution_id"] is None:  # no usable id: nowhere to write, nothing written
        assert outcome_keys == []
        return
    assert ID_RE.match(summary["execution_id"])
    assert outcome_keys == [KEYS.outcome(summary["execution_id"])]
    (raw,) = redis.lrange(outcome_keys[0], 0, -1)
    _check_rejection(Outcome.model_validate_json(raw))


@FUZZ
@given(payload=payloads, job_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_job_function_under_rq_always_writes_the_rejection_under_the_job_id(world, payload, job_id):
    redis, rt, executor = world
    redis.flushall()
    executor.started.clear()
    job = Job.create("worker.jobs.execute", args=("placeholder",), id=job_id, connection=redis, serializer=JSONSerializer)

    summary = ExecutionRun(rt, job, payload).run()

    assert summary["execution_id"] == job_id
    (raw,) = redis.lrange(KEYS.outcome(job_id), 0, -1)
    outcome = Outcome.model_validate_json(raw)
    if summary["status"] == "succeeded":
        assert [r.execution_id for r in executor.started] == [job_id]
        return
    assert executor.started == []
    _check_rejection(outcome)


# -- the rq worker, with raw job data written straight into Redis ----------------------------------

_raw_job_data = st.one_of(
    st.binary(max_size=100),
    _json_value.map(json.dumps),
    st.tuples(_odd_text | st.just("worker.jobs.execute"), _json_value, _json_value, _json_value).map(
        lambda t: json.dumps(list(t))
    ),
    payloads.filter(lambda p: not isinstance(p, bytes)).map(
        lambda p: json.dumps(["worker.jobs.execute", None, [p], {}])
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.lists(_raw_job_data, min_size=1, max_size=4))
def test_worker_survives_any_job_data_and_rejects_each(world, data):
    redis, rt, executor = world
    redis.flushall()
    executor.started.clear()
    previous = runtime_module._current
    runtime_module.install(rt)
    try:
        queue = Queue("fq", connection=redis, serializer=JSONSerializer)
        ids = [f"raw-{i}" for i in range(len(data))]
        for job_id, raw in zip(ids, data, strict=True):
            job = queue.enqueue_call("worker.jobs.execute", args=({},), job_id=job_id)
            redis.hset(job.key, "data", raw)
        DockrqWorker(["fq"], connection=redis, name="w-fuzz").work(burst=True)
    finally:
        runtime_module._current = previous
    started = {r.execution_id for r in executor.started}
    for job_id in ids:
        (raw,) = redis.lrange(KEYS.outcome(job_id), 0, -1)
        outcome = Outcome.model_validate_json(raw)
        if job_id in started:
            assert outcome.status == ExecutionStatus.SUCCEEDED
        else:
            _check_rejection(outcome)


# -- the producer --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def producer():
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    with Producer(connection=redis, queue="fq", prefix="f") as p:
        yield p
    redis.close()


def _valid(payload: Any) -> bool:
    from schemas import as_json_object

    try:
        ExecutionRequest.model_validate(as_json_object(payload))
    except Exception:  # noqa: BLE001 - any failure means the producer must refuse it
        return False
    return True


@FUZZ
@given(payload=payloads)
def test_producer_submit_refuses_invalid_requests_naming_the_field(producer, payload):
    redis = producer.connection
    redis.flushall()
    if _valid(payload):
        execution_id = producer.submit(payload)
        assert ID_RE.match(execution_id) and redis.exists(f"rq:job:{execution_id}")
        return
    with pytest.raises(InvalidRequest) as info:
        producer.submit(payload)
    assert NAMES_A_FIELD.match(str(info.value)) and len(str(info.value)) < 8000
    assert redis.keys("*") == []  # nothing claimed, nothing enqueued


@FUZZ
@given(batch=st.lists(payloads, max_size=5))
def test_producer_submit_many_is_all_or_nothing(producer, batch):
    redis = producer.connection
    redis.flushall()
    valid = [_valid(p) for p in batch]
    if all(valid):
        try:
            ids = producer.submit_many(batch)
        except DuplicateExecution:  # the same id twice in one batch
            assert redis.keys("*") == []
            return
        assert len(ids) == len(batch)
        return
    first_bad = valid.index(False)
    with pytest.raises(InvalidRequest) as info:
        producer.submit_many(batch)
    assert str(info.value).startswith(f"requests[{first_bad}]: ")
    assert redis.keys("*") == []


@FUZZ
@given(execution_id=_scalar | st.binary(max_size=20) | st.lists(_scalar, max_size=2))
def test_producer_lookups_of_odd_ids_say_not_found(producer, execution_id):
    producer.connection.flushall()
    for call in (producer.status, producer.cancel, lambda i: producer.wait(i, timeout=0.01), producer.logs):
        with pytest.raises(ExecutionNotFound):
            call(execution_id)


# -- the worst cases, named ------------------------------------------------------------------------


def test_validation_messages_stay_short_whatever_the_request(world, producer):
    redis, rt, executor = world
    redis.flushall()
    many_bad = {**VALID, "engine": {**VALID["engine"], "cmd": [1] * 200_000}, "x" * 100_000: 1}
    with pytest.raises(InvalidRequest) as info:
        producer.submit(many_bad)
    message = str(info.value)
    assert message.startswith("engine.cmd.0: Input should be a valid string; engine.cmd.1: ")
    assert message.endswith("199991 more errors: not listed") and len(message) < 2000

    ExecutionRun(rt, None, many_bad).run()
    (raw,) = redis.lrange(KEYS.outcome("fz-ok"), 0, -1)
    assert Outcome.model_validate_json(raw).error.message == message


def test_json_nested_too_deeply_is_an_invalid_request_not_a_crash(world, producer):
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(InvalidRequest, match="^request: not a JSON document: nested too deeply"):
        producer.submit(deep)
    redis, rt, executor = world
    summary = ExecutionRun(rt, None, deep).run()
    assert summary == {"execution_id": None, "status": "rejected", "exit_code": None}
