"""Retries on failure, worker side: an attempt that ends in one of the request's ``retry_on``
statuses, with ``retries`` left, is run again in a fresh container instead of ending the execution.

The request says what to retry (``schemas.ExecutionRequest``): ``retries`` (attempts
after the first), ``retry_on`` (among ``failed``, ``timed_out``, ``error``, ``lost``;
default ``lost``, what ``retries`` always meant) and ``retry_backoff_seconds`` (as
rq's ``Retry(interval=)``: a number, or one per retry, the last repeating).

rq's machinery does the re-running. When an attempt ends retryable, the job function
returns rq's ``Retry`` instead of its summary; rq (``handle_job_retry``) records a
``retried`` result, takes the job off the StartedJobRegistry and puts it back at the
head of its queue, or, with a backoff, in the ScheduledJobRegistry, from which rq's
scheduler enqueues it when it is due. A worker that died mid-attempt is handed to the
same rq call by the reaper's dead-workers sweep (``retry_lost``), once its container is stopped and removed.
dockrq counts the attempts itself (rq's ``max`` is set past the count, so rq never
gives up first): the rq job's meta carries ``attempts`` (the attempt running or next
to run) and ``previous_attempts`` (how each earlier one ended).

What stays true:

- exactly one outcome: nothing is written to ``P:exec:ID:outcome`` for an attempt
  that is retried, no eof goes on the log and no final event is published (the event
  is ``queued`` or ``scheduled``), so waiters and followers go on waiting; the
  outcome is the last attempt's, with ``attempts`` and ``previous_attempts``
  (``channels.finish`` adds them from the meta, whoever writes it);
- nothing twice at once: an attempt is retried only once its container has ended
  and is removed (the next attempt's container has the same name and would
  otherwise be adopted, not made afresh); a cancel asked meanwhile wins;
- the log goes on: each attempt continues ``seq`` where the last one stopped and
  begins with a marker batch ``{"seq": n, "attempt": k, "ts": t}``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError
from rq.exceptions import DeserializationError
from rq.job import Retry

from schemas import (
    META_ATTEMPTS,
    META_PREVIOUS_ATTEMPTS,
    AttemptRecord,
    Event,
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
    LogBatch,
    Outcome,
    attempts_from_meta,
)
from worker.executor import DAEMON_ERRORS
from worker.faults import settle

if TYPE_CHECKING:
    from redis import Redis
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

    from worker.execution.run import ExecutionRun
    from worker.faults.sweep import SweepContext

log = logging.getLogger(__name__)

RETRYABLE = {ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT, ExecutionStatus.ERROR, ExecutionStatus.LOST}
# rq fails a job that returned Retry once its own count reaches ``max``; dockrq decides by its
# own count, so ``max`` is set this far past rq's (a handoff retried through a Redis outage
# may count twice in rq).
_RQ_MAX_SLACK = 5


@dataclass(frozen=True)
class RetryPolicy:
    """The retry fields of one request."""

    request: ExecutionRequest

    @classmethod
    def of(cls, job: Job | None, request: ExecutionRequest | None = None) -> RetryPolicy | None:
        """The policy of ``request``, else of the request stored in ``job``; None when there is none to read."""
        if request is None:
            try:
                payload = job.args[0] if job is not None and job.args else None
                request = ExecutionRequest.model_validate(payload)
            except (DeserializationError, ValidationError, TypeError, ValueError):
                return None
        return cls(request)

    def allows(self, status: ExecutionStatus, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), ended ``status``, is followed by another."""
        return status in RETRYABLE and status.value in self.request.retry_on and attempt <= self.request.retries

    def backoff_before(self, attempt: int) -> int:
        return self.request.backoff_before(attempt)


def current_attempt(job: Job | None) -> int:
    """The attempt number running now (1 for a first run, or outside rq)."""
    return attempts_from_meta(job.meta if job is not None else None)[0]


def rq_retry(job: Job, backoff: int) -> Retry:
    """rq's Retry for one more attempt: after ``backoff`` seconds (scheduled), else at the head of the queue."""
    return Retry(max=(job.number_of_retries or 0) + 1 + _RQ_MAX_SLACK, interval=backoff, enqueue_at_front=True)


def _advance(job: Job, attempt: int, ended: Outcome, backoff: int) -> ExecutionState:
    """Record how attempt ``attempt`` ended and that attempt + 1 is next, in the job's meta (saved by rq)."""
    _, previous = attempts_from_meta(job.meta)
    previous.append(AttemptRecord.of(attempt, ended))
    state = ExecutionState.SCHEDULED if backoff else ExecutionState.QUEUED
    job.meta.update({
        META_ATTEMPTS: attempt + 1,
        META_PREVIOUS_ATTEMPTS: [p.model_dump(mode="json") for p in previous],
        "status": state.value,
        "container_id": None,
    })
    return state


def _publish(connection: Redis, events_key: str, execution_id: str, state: ExecutionState, worker: str | None) -> None:
    try:
        connection.publish(events_key, Event(execution_id=execution_id, status=state, worker=worker).model_dump_json())
    except Exception as exc:  # noqa: BLE001 - an event is a hint; the retry goes on
        log.warning("execution %s: %s event not published: %s", execution_id, state.value, exc)


# -- the job function (worker.execution.run.ExecutionRun) -----------------------------------


def begin_attempt(run: ExecutionRun) -> None:
    """At the start of attempt 2 or later: go on with the log's ``seq`` and mark where this attempt begins."""
    assert run.channels is not None
    attempt = current_attempt(run.job)
    if attempt < 2 or getattr(run, "resume", None) is not None:  # an adopted run goes on with its own log
        return
    channels = run.channels
    channels.resume_logs(_entries_sent(channels.connection, channels.keys.log_stream(run.execution_id)))
    channels.send_marker(LogBatch(seq=channels.entries_sent, attempt=attempt, ts=time.time()))


def next_attempt(run: ExecutionRun, outcome: Outcome) -> Retry | None:
    """Called as an attempt ends, before anything of its end is written: rq's Retry if another
    attempt follows (the outcome is then not written), else None (the outcome is final)."""
    job, channels = run.job, run.channels
    if job is None or channels is None or outcome.status not in RETRYABLE:
        return None
    policy = RetryPolicy.of(job)
    attempt = current_attempt(job)
    if policy is None or not policy.allows(outcome.status, attempt):
        return None
    if run._stopped_by_rq or run._cancel_reason is not None or channels.cancel_requested():
        return None  # a cancel wins over a retry
    if not _container_removed(run, outcome):
        return None
    run.runtime.forget(run.execution_id)
    backoff = policy.backoff_before(attempt + 1)
    state = _advance(job, attempt, outcome, backoff)
    _publish(channels.connection, channels.keys.events, run.execution_id, state, channels.worker)
    log.info(
        "execution %s: attempt %d of %d ended %s; %s", run.execution_id, attempt, policy.request.retries + 1,
        outcome.status.value, f"retrying in {backoff} s" if backoff else "retrying now",
    )
    return rq_retry(job, backoff)


def _container_removed(run: ExecutionRun, outcome: Outcome) -> bool:
    """The attempt's container is gone (the executor removes it as it ends; this makes sure,
    through the executor's owned-containers face: every container of the execution from this
    worker's executor id)."""
    if outcome.result is None or not outcome.result.container_id:
        return True  # no container was made
    executor = run.runtime.executor
    try:
        for container in executor.owned_containers(run.execution_id):
            if container.executor_id == run.runtime.settings.executor_id:
                executor.remove_container(container)
    except DAEMON_ERRORS as exc:
        log.warning("execution %s: attempt's container not removed (%s); not retrying", run.execution_id, exc)
        return False
    return True


def _entries_sent(connection: Redis, stream: str) -> int:
    """Log entries published so far for the execution (the next ``seq``), from its replay stream."""
    last = connection.xrevrange(stream, "+", "-", count=1)
    if not last:
        return 0
    batch = LogBatch.from_stream_entry(last[0][1])
    return batch.seq + len(batch.entries)


# -- the reaper (worker.faults.dead_workers): a worker died mid-attempt ----------------------


def retry_lost(ctx: SweepContext, job: Job, queue: Queue, execution: Execution, owner_name: str) -> bool:
    """The attempt of a dead worker (its container already removed): hand the job to rq for
    another attempt if the request retries ``lost`` and has retries left. Whether it did."""
    policy = RetryPolicy.of(job)
    attempt = current_attempt(job)
    if policy is None or not policy.allows(ExecutionStatus.LOST, attempt):
        return False
    if ctx.connection.exists(ctx.keys.cancel_flag(job.id)):
        return False  # a cancel wins over a retry
    lost = Outcome.failure(job.id, ExecutionStatus.LOST, "worker_lost", f"worker {owner_name} died")
    backoff = policy.backoff_before(attempt + 1)
    state = _advance(job, attempt, lost, backoff)
    job.meta["lost_worker"] = owner_name
    settle.retry(ctx.worker, job, queue, execution, rq_retry(job, backoff))
    _publish(ctx.connection, ctx.keys.events, job.id, state, ctx.worker.name)
    log.warning(
        "execution %s: worker %s lost; attempt %d of %d %s", job.id, owner_name, attempt + 1,
        policy.request.retries + 1, f"in {backoff} s" if backoff else "re-enqueued",
    )
    return True
