"""What ``status`` and ``ls`` report about an execution.

Two sources describe an execution and neither is complete: the outcome key is
the truth once it has ended (and outlives nothing else), the rq job knows where
it is queued, when it started, and, through the ``meta`` the worker mirrors,
which worker and container run it. The view merges them, the outcome winning.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import redis
from pydantic import BaseModel
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import ExecutionState, Keys, Outcome

# States the producer itself writes into meta at submit; anything else came from a worker.
_SUBMIT_STATES = {ExecutionState.QUEUED, ExecutionState.SCHEDULED}

_FROM_RQ = {
    JobStatus.CREATED: ExecutionState.QUEUED,
    JobStatus.QUEUED: ExecutionState.QUEUED,
    JobStatus.DEFERRED: ExecutionState.QUEUED,
    JobStatus.READY_TO_ENQUEUE: ExecutionState.QUEUED,
    JobStatus.RATE_LIMITED: ExecutionState.QUEUED,
    JobStatus.SCHEDULED: ExecutionState.SCHEDULED,
    JobStatus.STARTED: ExecutionState.RUNNING,
    JobStatus.CANCELED: ExecutionState.CANCELLED,
    # The job function returned or died without an outcome on record: the worker
    # (or its reaper) owes one, and "lost" is what the reaper will write.
    JobStatus.FINISHED: ExecutionState.LOST,
    JobStatus.FAILED: ExecutionState.LOST,
    JobStatus.STOPPED: ExecutionState.LOST,
}


class ExecutionStatusView(BaseModel):
    """One execution as ``dockrq status`` shows it. Times are UTC."""

    execution_id: str
    state: ExecutionState
    queue: str | None = None
    image: str | None = None
    worker: str | None = None
    container_id: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None

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


def build_view(execution_id: str, job: Job | None, outcome: Outcome | None) -> ExecutionStatusView:
    """Merge the rq job (if still stored) and the outcome (if ended) of one execution."""
    meta: dict[str, Any] = dict(job.meta) if job is not None else {}
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
    return ExecutionStatusView(
        execution_id=execution_id,
        state=state,
        queue=job.origin if job is not None else None,
        image=meta.get("image"),
        worker=meta.get("worker"),
        container_id=(result.container_id if result and result.container_id else meta.get("container_id")),
        enqueued_at=(job.enqueued_at or job.created_at) if job is not None else None,
        started_at=(result.started_at if result and result.started_at else job.started_at if job else None),
        ended_at=(result.finished_at if result and result.finished_at else job.ended_at if job else None),
        outcome=outcome,
    )


def recent_views(client: redis.Redis, keys: Keys, queues: list[Queue], limit: int) -> list[ExecutionStatusView]:
    """The newest ``limit`` executions of ``queues``, newest first, from rq's queue and registries
    (read without cleaning them: listing must not change state) and the outcomes."""
    ids: dict[str, None] = {}
    for q in queues:
        ids.update(dict.fromkeys(reversed(q.get_job_ids(offset=-limit))))
        for registry in (
            q.started_job_registry,
            q.scheduled_job_registry,
            q.finished_job_registry,
            q.failed_job_registry,
            q.canceled_job_registry,
        ):
            ids.update(dict.fromkeys(registry.get_job_ids(0, limit - 1, desc=True, cleanup=False)))
    jobs = [j for j in Job.fetch_many(list(ids), connection=client, serializer=JSONSerializer) if j]
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.lindex(keys.outcome(job.id), 0)
        raw_outcomes = pipe.execute()
    views = [
        build_view(job.id, job, Outcome.model_validate_json(raw) if raw else None)
        for job, raw in zip(jobs, raw_outcomes, strict=True)
    ]
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    views.sort(key=lambda v: v.enqueued_at or epoch, reverse=True)
    return views[:limit]
