"""The Redis wire contract: key names and the JSON documents written to them.

Anything that can speak Redis (another language's scheduler, ``redis-cli``) may
read or write these, so the shapes are plain JSON and documented in the README.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from .defaults import DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_RETENTION_SECONDS
from .execution import ExecutionResult, ExecutionState, ExecutionStatus, LogEntry
from .text import NOT_UTF8

JOB_FUNCTION = "worker.jobs.execute"
# The field of each ``P:exec:ID:log`` stream entry that holds one LogBatch's JSON.
LOG_STREAM_FIELD = "batch"
CANCEL_MESSAGE = "cancel"

# First writer wins: the worker, a producer cancelling a queued job and the reaper
# may race to end one execution, and the outcome list must hold exactly one element.
# KEYS[1] outcome list; ARGV[1] outcome JSON; ARGV[2] retention seconds. Returns 1 if written.
# Optional: KEYS[2] the status index ``P:ended:QUEUE:STATUS`` (``Keys.ended``), ARGV[3] the
# execution id, ARGV[4] the end time (Unix seconds): the id is added to the index with that
# score, and entries older than the retention leave it, in the same atomic step (an empty
# KEYS[2] means none). Optional: KEYS[3] the input archive ``P:exec:ID:inputs`` (``Keys.inputs``)
# of an execution whose container was never created (rejected, cancelled before it started...):
# deleted with the outcome's write, since the outcome is final and no attempt will read it.
WRITE_OUTCOME_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if KEYS[2] and KEYS[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[4]) - tonumber(ARGV[2])))
end
if KEYS[3] then
  redis.call('DEL', KEYS[3])
end
return 1
"""

# A request is copied whole into Redis and into every worker that takes it, so it
# is bounded: a producer refuses a larger one (``Producer(max_request_bytes=)``)
# and a worker rejects a larger one unread (``DOCKRQ_MAX_REQUEST_BYTES``). Measured
# as its JSON in the rq job (``request_size``); a worker measures the whole job
# data, the request plus rq's framing of the call, and allows that framing on top.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
MIN_MAX_REQUEST_BYTES = 1024  # room for any request with its defaults (about 400 bytes)
JOB_FRAMING_BYTES = 1024


def request_size(request: Any) -> int:
    """Bytes of ``request`` (a JSON-ready object) in an rq job: its JSON as rq's
    JSONSerializer writes it (``json.dumps`` defaults, ASCII only, so one byte a character)."""
    return len(json.dumps(request))


def written_key(archive_key: str) -> str:
    """The progress counter of the archive at ``archive_key`` while its producer writes it."""
    return f"{archive_key}:written"


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one prefix; the only place they are spelled."""

    prefix: str = DEFAULT_PREFIX

    def outcome(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}:outcome"

    def logs_channel(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}:logs"

    def log_stream(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}:log"

    def log_compact(self, execution_id: str) -> str:
        """An ended execution's whole log as one string, in place of ``log_stream`` (schemas.compact_log)."""
        return f"{self.prefix}:exec:{execution_id}:logz"

    def claim(self, execution_id: str) -> str:
        """Set NX by the producer that submits this id, so two submits never both enqueue it."""
        return f"{self.prefix}:exec:{execution_id}:claimed"

    def cancel_flag(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}:cancel"

    def control_channel(self, execution_id: str) -> str:
        return f"{self.prefix}:exec:{execution_id}:control"

    def inputs(self, execution_id: str) -> str:
        """The input archive (a string holding a tar), written by the producer before the enqueue."""
        return f"{self.prefix}:exec:{execution_id}:inputs"

    def inputs_written(self, execution_id: str) -> str:
        """While the producer writes the input archive: the bytes it wrote so far (``INCRBY``), so
        a Redis that lost some of them (a restart) is noticed; deleted once the archive is whole."""
        return written_key(self.inputs(execution_id))

    def outputs(self, execution_id: str) -> str:
        """The output archive (a string holding a tar), renamed into place whole by the worker."""
        return f"{self.prefix}:exec:{execution_id}:outputs"

    def outputs_partial(self, execution_id: str) -> str:
        """Where the worker appends the output archive before renaming it to ``outputs``."""
        return f"{self.prefix}:exec:{execution_id}:outputs:partial"

    def reap_lock(self, execution_id: str) -> str:
        """SET NX PX by the worker that reaps or adopts the execution of a dead worker."""
        return f"{self.prefix}:exec:{execution_id}:reaping"

    def dashboard_view(self, execution_id: str) -> str:
        """What the dashboard's Delete kept of an ended execution's rq job (JSON; worker/observe/dashboard_gone.py)."""
        return f"{self.prefix}:exec:{execution_id}:dashboard"

    def ended(self, queue: str, status: str) -> str:
        """Sorted set of the executions of rq queue ``queue`` that ended with ``status`` within
        the retention, scored by end time (Unix seconds); written with the outcome."""
        return f"{self.prefix}:ended:{queue}:{status}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def replication_marker(self) -> str:
        """Written just before a WAIT that confirms a write on the replicas (schemas/replication.py)."""
        return f"{self.prefix}:replicated"


class OutcomeError(BaseModel):
    model_config = ConfigDict(defer_build=True)

    code: str
    message: str


class AttemptRecord(BaseModel):
    """How one earlier attempt of a retried execution ended (``Outcome.previous_attempts``)."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    attempt: int = Field(ge=1)
    status: ExecutionStatus
    exit_code: int | None = None
    error_code: str | None = None

    @classmethod
    def of(cls, attempt: int, outcome: Outcome) -> AttemptRecord:
        code = outcome.error.code if outcome.error is not None else None
        return cls(attempt=attempt, status=outcome.status, exit_code=outcome.exit_code, error_code=code)


class Outcome(BaseModel):
    """The one element of ``P:exec:ID:outcome``: how the execution ended.

    A retried execution's outcome is its last attempt's, with ``attempts`` (how many
    ran) and ``previous_attempts`` (how each earlier one ended). Cancelled before a
    retry began, it lists every attempt that ran in ``previous_attempts`` and
    ``attempts`` is their number (``with_attempts``). Both are left out of
    the JSON for an execution that ran once, as outcomes were before retries existed.
    """

    model_config = ConfigDict(defer_build=True, extra="ignore")

    execution_id: str
    status: ExecutionStatus
    result: ExecutionResult | None = None
    error: OutcomeError | None = None
    attempts: int = Field(default=1, ge=1)
    previous_attempts: list[AttemptRecord] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _drop_single_attempt(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if isinstance(data, dict) and self.attempts == 1 and not self.previous_attempts:
            data.pop("attempts", None)
            data.pop("previous_attempts", None)
        return data

    def with_attempts(self, attempts: int, previous: list[AttemptRecord]) -> Outcome:
        """This outcome as the last of ``attempts`` attempts, the earlier ones ``previous``.

        A cancel that came before the next attempt started (during a retry's backoff, or
        while it waited in the queue: ``cancelled`` with no container result) ended no attempt
        of its own: ``attempts`` is then the number that really ran, all of them in ``previous``.
        """
        if attempts <= 1 and not previous:
            return self
        if self.status is ExecutionStatus.CANCELLED and self.result is None and previous:
            return self.model_copy(update={"attempts": len(previous), "previous_attempts": list(previous)})
        return self.model_copy(update={"attempts": max(attempts, len(previous) + 1), "previous_attempts": list(previous)})

    @classmethod
    def from_result(cls, result: ExecutionResult) -> Outcome:
        error = None
        if result.status in (ExecutionStatus.ERROR, ExecutionStatus.LOST) or result.error_code:
            error = OutcomeError(code=result.error_code or result.status.value, message=result.error_msg or "")
        return cls(execution_id=result.execution_id, status=result.status, result=result, error=error)

    @classmethod
    def failure(cls, execution_id: str, status: ExecutionStatus, code: str, message: str) -> Outcome:
        """An outcome with no container result: rejected, cancelled before start, lost."""
        return cls(execution_id=execution_id, status=status, error=OutcomeError(code=code, message=message))

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code if self.result else None

    def summary(self) -> dict[str, Any]:
        """The rq job's return value for this outcome: ``{execution_id, status, exit_code}``."""
        return {"execution_id": self.execution_id, "status": self.status.value, "exit_code": self.exit_code}


# rq job meta fields of a retried execution (worker/execution/retries.py): the number of the attempt
# running or next to run, and how each earlier one ended (AttemptRecord dicts).
META_ATTEMPTS = "attempts"
META_PREVIOUS_ATTEMPTS = "previous_attempts"


def attempts_from_meta(meta: dict[str, Any] | None) -> tuple[int, list[AttemptRecord]]:
    """(current attempt number, earlier attempts) from an rq job's meta; (1, []) when it never retried."""
    meta = meta or {}
    try:
        attempts = max(1, int(meta.get(META_ATTEMPTS) or 1))
    except (TypeError, ValueError):
        attempts = 1
    previous = []
    for raw in meta.get(META_PREVIOUS_ATTEMPTS) or ():
        try:
            previous.append(AttemptRecord.model_validate(raw))
        except ValidationError:
            continue
    return attempts, previous


class LogBatch(BaseModel):
    """One message on ``P:exec:ID:logs`` and one entry of the ``P:exec:ID:log`` stream.

    ``seq`` is the number of entries sent before this batch, so entry *i* of the
    batch has sequence ``seq + i``; a reader that has seen up to N skips what is
    below N. The last batch has ``eof`` true, no entries and ``seq`` = total.
    """

    model_config = ConfigDict(defer_build=True)

    seq: int = Field(ge=0)
    entries: list[LogEntry] = Field(default_factory=list)
    eof: bool = False
    # An attempt marker (a retried execution): ``{"seq": n, "attempt": k, "ts": t}``, no
    # entries; the entries from ``seq`` n on are attempt k's. Attempt 1 begins at seq 0, unmarked.
    attempt: int | None = Field(default=None, ge=1)
    ts: float | None = None

    @classmethod
    def from_stream_entry(cls, fields: dict[bytes, bytes]) -> LogBatch:
        """The batch held by one entry of the ``P:exec:ID:log`` stream (as XRANGE returns it)."""
        return cls.model_validate_json(fields[LOG_STREAM_FIELD.encode()])

    def to_stream_entry(self) -> dict[str, str]:
        """The fields of this batch's ``P:exec:ID:log`` stream entry (XADD)."""
        return {LOG_STREAM_FIELD: self.to_json()}

    def to_json(self) -> str:
        if self.eof:
            return self.model_dump_json(include={"seq", "eof"})
        if self.attempt is not None:
            return self.model_dump_json(include={"seq", "attempt", "ts"})
        return self.model_dump_json(include={"seq", "entries"})


class PullReport(BaseModel):
    """How far an image pull is, on ``P:events`` with status ``pulling`` (a few a second at most).

    Bytes are the compressed layer bytes downloaded of those announced so far (a
    layer's size is known once its download starts); ``done`` on the last one.
    """

    model_config = ConfigDict(defer_build=True, extra="ignore")

    image: str
    layers_done: int = Field(ge=0)
    layers_total: int = Field(ge=0)
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    done: bool = False


class Event(BaseModel):
    """A state change on ``P:events``; ``pulling`` events may repeat with ``progress``."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    execution_id: str
    status: ExecutionState
    ts: float = Field(default_factory=time.time)
    worker: str | None = None
    progress: PullReport | None = None


# Error messages end up in outcomes, logs and terminals: a hostile request with
# 100 000 bad list items or a megabyte-long unknown key must not make them huge.
MAX_DESCRIBED_ERRORS = 10
MAX_LOC_PART = 64
MAX_MESSAGE = 200


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _short(value: Any, limit: int) -> str:
    text = str(value)
    if not text.isprintable():
        text = repr(text)[1:-1]  # NUL, newlines, escapes: shown escaped, on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc_part(part: Any) -> str:
    # Field names and list indexes as they are; any other key (an unknown field
    # called ":" or "a b", an env name with a newline) quoted, so it reads as one name.
    text = str(part)
    return _short(text if isinstance(part, int) or _PLAIN_NAME.match(text) else repr(text), MAX_LOC_PART)


def _own_words(message: str) -> str:
    """A validator's message without the prefix pydantic puts before a ValueError's or
    AssertionError's text ("Value error, must be ..." -> "must be ...")."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line naming each bad field, e.g. ``engine.image: Field required``."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False, include_context=True)
    for err in errors[:MAX_DESCRIBED_ERRORS]:
        loc = ".".join(_loc_part(p) for p in err.get("loc", ())) or "request"
        if err.get("type") == NOT_UTF8:  # found below the model's own location (schemas.text)
            loc = _short(err.get("ctx", {}).get("at", loc), MAX_LOC_PART * 4)
        parts.append(f"{loc}: {_short(_own_words(err.get('msg', 'invalid')), MAX_MESSAGE)}")
    if len(errors) > MAX_DESCRIBED_ERRORS:
        parts.append(f"{len(errors) - MAX_DESCRIBED_ERRORS} more errors: not listed")
    return "; ".join(parts)


def as_json_object(payload: Any) -> Any:
    """Accept a request given as a dict, a model or a JSON string (for non-Python producers).

    A string that is not JSON raises ``json.JSONDecodeError`` (a ValueError),
    also when it nests too deeply for the parser.
    """
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8", errors="replace")
    if isinstance(payload, str):
        try:
            return json.loads(payload)
        except RecursionError:
            raise json.JSONDecodeError("nested too deeply", payload, 0) from None
    return payload
