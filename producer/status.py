"""What ``status`` and ``ls`` report about an execution.

Two sources describe an execution and neither is complete: the outcome key is
the truth once it has ended (and outlives nothing else), the rq job knows where
it is queued, when it started, and, through the ``meta`` the worker mirrors,
which worker and container run it. The view merges them, the outcome winning.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict
from rq.job import Job, JobStatus

from schemas import ExecutionState, Outcome, attempts_from_meta

from .kept import KeptJob

# States the producer itself writes into meta at submit; anything else came from a worker.
_SUBMIT_STATES = {ExecutionState.QUEUED, ExecutionState.SCHEDULED}

_FROM_RQ = {
    JobStatus.CREATED: ExecutionState.QUEUED,
    JobStatus.QUEUED: ExecutionState.QUEUED,
    JobStatus.DEFERRED: ExecutionState.QUEUED,
    JobStatus.READY_TO_ENQUEUE: ExecutionState.QUEUED,
    JobStatus.RATE_LIMITED: ExecutionState.QUEUED,
    JobStatus.SCHEDULED: ExecutionState.SCHEDULED,
    # A worker took it; until it says otherwise (meta ``status``: pulling, then running once
    # the container started) it is preparing: never "running" before a container runs.
    JobStatus.STARTED: ExecutionState.PULLING,
    JobStatus.CANCELED: ExecutionState.CANCELLED,
    # The job function returned or died without an outcome on record: the worker
    # (or its reaper) owes one, and "lost" is what the reaper will write.
    JobStatus.FINISHED: ExecutionState.LOST,
    JobStatus.FAILED: ExecutionState.LOST,
    JobStatus.STOPPED: ExecutionState.LOST,
}


class ExecutionStatusView(BaseModel):
    """One execution as ``dockrq status`` shows it. Times are UTC."""

    model_config = ConfigDict(defer_build=True)  # built when first shown (README, "Start-up")

    execution_id: str
    state: ExecutionState
    queue: str | None = None
    image: str | None = None
    worker: str | None = None
    node: str | None = None  # the executor id (DOCKRQ_EXECUTOR_ID) of the node that ran it, from meta "node"
    container_id: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None
    attempt: int = 1  # a retried execution: the attempt running, next to run, or (ended) the last one
    # Where the time went, in seconds (so far, while it lasts; kept in the outcome after the end):
    # waiting for a worker, pulling the image (None: no pull), the container running.
    queued_seconds: float | None = None
    pull_seconds: float | None = None
    run_seconds: float | None = None

    @property
    def duration_seconds(self) -> float | None:
        """Run time so far, or in total once ended."""
        if self.started_at is None:
            return None
        end = self.ended_at or (None if self.state.final else datetime.now(timezone.utc))
        return (end - self.started_at).total_seconds() if end else None


def _state(value: Any) -> ExecutionState | None:
    try:
        return ExecutionState(value)
    except ValueError:
        return None


def _epoch(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _times(
    state: ExecutionState, job: Job | None, meta: dict[str, Any], outcome: Outcome | None
) -> tuple[float | None, float | None, float | None]:
    """(queued, pulling, running) seconds. Once ended, the result's own figures (the worker
    wrote them); before, the rq job's enqueue time and the worker's ``pulling_at``,
    ``running_at`` and ``pull_seconds`` in its meta, measured to now while they last."""
    now = time.time()
    result = outcome.result if outcome else None
    if result is not None:
        running = result.duration_seconds
        return result.queued_seconds, result.pull_seconds, running
    pulling_at, running_at = _epoch(meta.get("pulling_at")), _epoch(meta.get("running_at"))
    enqueued = job.enqueued_at if job is not None else None
    queued = None
    if enqueued is not None:
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=timezone.utc)
        end = pulling_at or (None if state.final else now)
        if end is None and outcome is not None and job is not None and job.ended_at is not None:
            end = job.ended_at.replace(tzinfo=job.ended_at.tzinfo or timezone.utc).timestamp()
        queued = max(0.0, end - enqueued.timestamp()) if end is not None else None
    pulling = _epoch(meta.get("pull_seconds"))
    if pulling is None and state == ExecutionState.PULLING and pulling_at is not None:
        pulling = max(0.0, now - pulling_at)
    running = max(0.0, now - running_at) if state == ExecutionState.RUNNING and running_at is not None else None
    return queued, pulling, running


def build_view(
    execution_id: str, job: Job | None, outcome: Outcome | None, kept: KeptJob | None = None
) -> ExecutionStatusView:
    """Merge the rq job (if still stored) and the outcome (if ended) of one execution; ``kept``:
    what is kept of an rq job that is gone (``producer.kept``: queue, image, worker, node)."""
    meta: dict[str, Any] = dict(job.meta) if job is not None else {}
    if job is None and kept is not None:
        meta = {"image": kept.image, "worker": kept.worker, "node": kept.node}
    result = outcome.result if outcome else None
    if outcome is not None:
        state = ExecutionState(outcome.status.value)
    elif job is not None:
        rq_state = _FROM_RQ.get(job.get_status(refresh=False), ExecutionState.QUEUED)
        meta_state = _state(meta.get("status"))
        if rq_state.final and not (meta_state and meta_state.final):
            state = rq_state
        elif meta_state is not None and meta_state not in _SUBMIT_STATES:
            state = meta_state  # the worker's word is finer than rq's (pulling vs running)
        else:
            state = rq_state
    else:
        state = ExecutionState.QUEUED  # claimed, enqueue in flight
    queued, pulling, running = _times(state, job, meta, outcome)
    return ExecutionStatusView(
        execution_id=execution_id,
        queued_seconds=queued,
        pull_seconds=pulling,
        run_seconds=running,
        state=state,
        queue=job.origin if job is not None else kept.queue if kept is not None else None,
        image=meta.get("image"),
        worker=meta.get("worker"),
        node=meta.get("node"),
        container_id=(result.container_id if result and result.container_id else meta.get("container_id")),
        enqueued_at=(job.enqueued_at or job.created_at) if job is not None else kept.enqueued_at if kept else None,
        started_at=(result.started_at if result and result.started_at else job.started_at if job else None),
        ended_at=(result.finished_at if result and result.finished_at else job.ended_at if job else None),
        outcome=outcome,
        attempt=outcome.attempts if outcome is not None else attempts_from_meta(meta)[0],
    )
