"""Adopting a dead predecessor's execution: follow its container to the end.

A worker killed mid-execution leaves its container running. A worker with the
same executor id on the same daemon (the restarted worker, a sibling of a
``--pool``) takes the execution over instead of starting it again:

- the rq job is re-pointed to the adopter (rq's execution record and the job's
  ``worker_name``), so reapers judge the adopter's heartbeat from now on;
- the executor is asked to start the same request: it finds the existing
  container by the execution's labels, whatever its name
  (``worker.executor.leftover``), and follows it, replaying its output from the
  beginning (an exited one is read from its log at once);
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rq.job import Retry

from schemas import ExecutionResult
from schemas.connections import REDIS_DOWN, ride_out_outage
from worker.execution.logs import LogResume, LogShipper, ResumedSource
from worker.execution.run import ExecutionRun
from worker.executor import DockerExecutor, ExecutionOwnedElsewhere, OwnedContainer
from worker.faults import contested, settle

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

    from worker.service.runtime import WorkerRuntime
    from worker.service.worker import DockrqWorker

log = logging.getLogger(__name__)

_SETTLE_ATTEMPTS = 60


class AdoptedRun(ExecutionRun):
    """The job function's run, resumed: same start/wait/cancel/outcome path, logs continued."""

    def __init__(self, runtime: WorkerRuntime, job: Job, payload: Any, resume: LogResume) -> None:
        super().__init__(runtime, job, payload)
        self.resume = resume
        self.shutting_down = False

    def _ship_logs(self, executor: DockerExecutor) -> None:
        assert self.channels is not None
        self.channels.resume_logs(self.resume.entries, ended=self.resume.ended)
        self._shipper = LogShipper(self.channels, ResumedSource(executor, self.resume), self.execution_id)
        self._shipper.start()

    def _end(self, outcome: Any, *, final: bool = False) -> Any:
        if self.channels is not None:
            self.channels.resume_logs(self.resume.entries, ended=self.resume.ended)  # the eof's seq counts the predecessor's entries
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

    def __init__(self, worker: DockrqWorker, runtime: WorkerRuntime, rq_ttl: int) -> None:
        self.worker = worker
        self.runtime = runtime
        self.rq_ttl = rq_ttl
        self._active: dict[str, _Adopted] = {}
        self._lock = threading.Lock()

    def active(self) -> set[str]:
        with self._lock:
            return set(self._active)

    def adopt(self, job: Job, queue: Queue, execution: Execution, container: OwnedContainer) -> None:
        """Take the execution over (the caller holds the execution's reap lock)."""
        connection = self.worker.connection
        keys = self.runtime.keys
        resume = LogResume.read(connection, keys.log_stream(job.id), keys.log_compact(job.id))
        settle.adopt(connection, self.worker, job, queue, execution, self.rq_ttl)
        payload = _remaining_time(job.args[0] if job.args else None, container)
        run = AdoptedRun(self.runtime, job, payload, resume)
        adopted = _Adopted(job, queue, execution, run)
        with self._lock:
            self._active[job.id] = adopted
        log.warning(
            "execution %s: adopting container %s of lost worker (%d log entries already shipped)",
            job.id, container.short_id, resume.entries,
        )
        adopted.thread = threading.Thread(target=self._follow, args=(adopted,), name=f"dockrq-adopt-{job.id}", daemon=True)
        adopted.thread.start()

    def _follow(self, a: _Adopted) -> None:
        try:
            try:
                summary = a.run.run()
            except ExecutionOwnedElsewhere as exc:  # its owner lives after all: the run goes on there
                contested.step_back(self.worker, a.job, a.queue, a.execution, exc)
                return
            except BaseException as exc:  # noqa: BLE001 - the rq job must still be settled
                reason = f"{type(exc).__name__}: {exc}"
                _with_redis_retry(lambda: settle.fail(self.worker, a.job, a.queue, a.execution, reason), a.job.id)
                return
            if isinstance(summary, Retry):  # the attempt ended retryable: another one (worker.execution.retries)
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

    def shut_down(self, margin: float) -> None:
        """Cold shutdown: cancel every adopted execution and wait for their outcomes, at most the
        longest stop grace among them (each request's ``stop_timeout``, else the worker's) plus
        ``margin`` seconds."""
        with self._lock:
            adopted = list(self._active.values())
        for a in adopted:
            a.run.shut_down()
        self.wait(max((a.run.stop_grace for a in adopted), default=0.0) + margin)


def _remaining_time(payload: Any, container: OwnedContainer) -> Any:
    """The request with ``timeout_seconds`` reduced by the time the container has already run."""
    if not isinstance(payload, dict) or not payload.get("timeout_seconds"):
        return payload
    created = container.created or time.time()
    try:
        left = float(payload["timeout_seconds"]) - max(0.0, time.time() - created)
    except (TypeError, ValueError):
        return payload
    return {**payload, "timeout_seconds": max(left, 0.01)}


def _with_redis_retry(action: Callable[[], None], execution_id: str) -> None:
    """Settle the rq job, retried while Redis is away (at most ``_SETTLE_ATTEMPTS`` tries;
    then the reaper settles it)."""

    def away(exc: Exception, failures: int) -> None:
        log.warning("execution %s: settling the rq job failed (%s); retrying", execution_id, exc)

    try:
        ride_out_outage(action, away, retries=_SETTLE_ATTEMPTS - 1)
    except REDIS_DOWN:  # the reaper settles it later
        log.error("execution %s: could not settle the rq job; the reaper will", execution_id)
