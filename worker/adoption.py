"""Adopting a dead predecessor's execution: follow its container to the end.

A worker killed mid-execution leaves its container running. A worker with the
same executor id on the same daemon (the restarted worker, a sibling of a
``--pool``) takes the execution over instead of starting it again:

- the rq job is re-pointed to the adopter (rq's execution record and the job's
  ``worker_name``), so reapers judge the adopter's heartbeat from now on;
- the executor is asked to start the same request: the container name is
  derived from executor id + execution id, so it finds the existing container
  and follows it, replaying its output from the beginning;
- the log shipper skips what the predecessor already published (per stream, by
  characters, counted from the ``P:exec:ID:log`` stream; by entries when that
  stream was capped) and continues ``seq`` where the predecessor stopped, so
  followers see no gap and no duplicate;
- the outcome is written as for any execution and the rq job is settled
  (finished), off the worker's main thread, which keeps serving its queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from rq.job import Retry

from schemas import ExecutionResult, LogBatch, LogEntry, LogStreamRequest
from worker.executor.types import LABEL_CREATED

from . import settle
from .jobs import ExecutionRun, LogShipper

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue
    from rq.worker import BaseWorker

    from .runtime import WorkerRuntime

log = logging.getLogger(__name__)

_PAGE = 500
_SETTLE_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.2)


@dataclass(frozen=True)
class LogResume:
    """How far the predecessor got publishing the log: entries sent, and characters per stream.

    ``chars`` is None when the replay stream no longer holds the first batches
    (it is capped): then the first ``entries`` replayed entries are skipped.
    """

    entries: int = 0
    chars: dict[str, int] | None = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    attempt_start: int = 0  # seq where the running attempt began (its marker); its container's output starts there

    @classmethod
    def read(cls, connection: redis.Redis, stream: str) -> LogResume:
        last = connection.xrevrange(stream, "+", "-", count=1)
        if not last:
            return cls()
        newest = _batch(last[0][1])
        entries = newest.seq + len(newest.entries)
        chars = {"stdout": 0, "stderr": 0}
        after, expected, complete, attempt_start = "-", 0, True, 0
        while True:
            page = connection.xrange(stream, after, "+", count=_PAGE)
            for entry_id, fields in page:
                batch = _batch(fields)
                if batch.seq != expected:  # the start was trimmed away: count entries instead
                    complete, expected = False, batch.seq
                if batch.attempt is not None:  # a retry's attempt begins: its container's output starts here
                    chars, complete, attempt_start = {"stdout": 0, "stderr": 0}, True, batch.seq
                expected += len(batch.entries)
                for e in batch.entries:
                    chars[e.stream] += len(e.data)
                after = "(" + entry_id.decode()
            if len(page) < _PAGE:
                return cls(entries=entries, chars=chars if complete else None, attempt_start=attempt_start)


def _batch(fields: dict[bytes, bytes]) -> LogBatch:
    return LogBatch.model_validate_json(fields[b"batch"])


class _SkippingStream:
    """A LogStream minus what was already shipped."""

    def __init__(self, inner: Any, resume: LogResume) -> None:
        self._inner = inner
        self._skip_entries = resume.entries - resume.attempt_start if resume.chars is None else 0
        self._skip_chars = dict(resume.chars or {})

    def read_batch(self, max_entries: int = 512, timeout: float | None = None) -> list[LogEntry] | None:
        batch = self._inner.read_batch(max_entries, timeout)
        if batch is None:
            return None
        out = []
        for entry in batch:
            if self._skip_entries:
                self._skip_entries -= 1
                continue
            left = self._skip_chars.get(entry.stream, 0)
            if left:
                if len(entry.data) <= left:
                    self._skip_chars[entry.stream] = left - len(entry.data)
                    continue
                self._skip_chars[entry.stream] = 0
                entry = LogEntry(stream=entry.stream, ts=entry.ts, data=entry.data[left:])
            out.append(entry)
        return out

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _ResumedSource:
    """What LogShipper reads from: the executor, with the already-shipped part skipped."""

    def __init__(self, executor: Any, resume: LogResume) -> None:
        self._executor = executor
        self._resume = resume

    def get_log_stream(self, request: LogStreamRequest) -> _SkippingStream:
        return _SkippingStream(self._executor.get_log_stream(request), self._resume)


class AdoptedRun(ExecutionRun):
    """The job function's run, resumed: same start/wait/cancel/outcome path, logs continued."""

    def __init__(self, runtime: WorkerRuntime, job: Job, payload: Any, resume: LogResume) -> None:
        super().__init__(runtime, job, payload)
        self.resume = resume
        self.shutting_down = False

    def _ship_logs(self, executor: Any) -> None:
        assert self.channels is not None
        self.channels.resume_logs(self.resume.entries)
        self._shipper = LogShipper(self.channels, _ResumedSource(executor, self.resume), self.execution_id)
        self._shipper.start()

    def _end(self, outcome: Any, *, final: bool = False) -> Any:
        if self.channels is not None:
            self.channels.resume_logs(self.resume.entries)  # the eof's seq counts the predecessor's entries
        return super()._end(outcome, final=final)

    def _explain_cancel(self, result: ExecutionResult) -> ExecutionResult:
        if self.shutting_down and result.status.value == "cancelled":
            return result.model_copy(update={"error_code": "worker_shutdown", "error_msg": "the worker shut down"})
        return super()._explain_cancel(result)

    def shut_down(self) -> None:
        self.shutting_down = True
        self.cancel("the worker shut down")


@dataclass
class _Adopted:
    job: Job
    queue: Queue
    execution: Execution
    run: AdoptedRun
    thread: threading.Thread | None = None


class Adoptions:
    """The executions this worker adopted and follows in background threads."""

    def __init__(self, worker: BaseWorker, runtime: WorkerRuntime, rq_ttl: int) -> None:
        self.worker = worker
        self.runtime = runtime
        self.rq_ttl = rq_ttl
        self._active: dict[str, _Adopted] = {}
        self._lock = threading.Lock()

    def active(self) -> set[str]:
        with self._lock:
            return set(self._active)

    def adopt(self, job: Job, queue: Queue, execution: Execution, container: dict[str, Any]) -> None:
        """Take the execution over (the caller holds the execution's reap lock)."""
        connection = self.worker.connection
        resume = LogResume.read(connection, self.runtime.keys.log_stream(job.id))
        settle.adopt(connection, self.worker, job, queue, execution, self.rq_ttl)
        payload = _remaining_time(job.args[0] if job.args else None, container)
        run = AdoptedRun(self.runtime, job, payload, resume)
        adopted = _Adopted(job, queue, execution, run)
        with self._lock:
            self._active[job.id] = adopted
        log.warning(
            "execution %s: adopting container %s of lost worker (%d log entries already shipped)",
            job.id, container.get("Id", "")[:12], resume.entries,
        )
        adopted.thread = threading.Thread(target=self._follow, args=(adopted,), name=f"dockrq-adopt-{job.id}", daemon=True)
        adopted.thread.start()

    def _follow(self, a: _Adopted) -> None:
        try:
            try:
                summary = a.run.run()
            except BaseException as exc:  # noqa: BLE001 - the rq job must still be settled
                reason = f"{type(exc).__name__}: {exc}"
                _with_redis_retry(lambda: settle.fail(self.worker, a.job, a.queue, a.execution, reason), a.job.id)
                return
            if isinstance(summary, Retry):  # the attempt ended retryable: another one (worker/retries.py)
                _with_redis_retry(lambda: settle.retry(self.worker, a.job, a.queue, a.execution, summary), a.job.id)
                return
            _with_redis_retry(lambda: settle.finish(self.worker, a.job, a.queue, a.execution, summary), a.job.id)
        finally:
            with self._lock:
                self._active.pop(a.job.id, None)

    def keep_alive(self) -> None:
        """Refresh rq's started entries of the adopted executions (called with the worker heartbeat)."""
        with self._lock:
            adopted = list(self._active.values())
        for a in adopted:
            settle.keep_alive(self.worker.connection, a.queue, a.execution, self.rq_ttl)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every adopted execution to end; whether they all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [a.thread for a in self._active.values() if a.thread is not None]
            if not threads:
                return True
            for t in threads:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                t.join(remaining if remaining is None else min(remaining, 1.0))
            if deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    return not self._active

    def shut_down(self, timeout: float) -> None:
        """Cold shutdown: cancel every adopted execution and wait (bounded) for their outcomes."""
        with self._lock:
            adopted = list(self._active.values())
        for a in adopted:
            a.run.shut_down()
        self.wait(timeout)


def _remaining_time(payload: Any, container: dict[str, Any]) -> Any:
    """The request with ``timeout_seconds`` reduced by the time the container has already run."""
    if not isinstance(payload, dict) or not payload.get("timeout_seconds"):
        return payload
    labels = container.get("Labels") or {}
    try:
        created = float(labels.get(LABEL_CREATED) or container.get("Created") or time.time())
    except ValueError:
        created = time.time()
    try:
        left = float(payload["timeout_seconds"]) - max(0.0, time.time() - created)
    except (TypeError, ValueError):
        return payload
    return {**payload, "timeout_seconds": max(left, 0.01)}


def _with_redis_retry(action: Callable[[], None], execution_id: str, attempts: int = 60) -> None:
    for attempt in range(1, attempts + 1):
        try:
            action()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            pause = _SETTLE_BACKOFF.compute(attempt)
            log.warning("execution %s: settling the rq job failed (%s); retrying in %.1fs", execution_id, exc, pause)
            time.sleep(pause)
    log.error("execution %s: could not settle the rq job; the reaper will", execution_id)
