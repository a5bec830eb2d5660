"""``Producer.cancel``: stop an execution wherever it is, in one watched transaction.

Queued or scheduled: the rq job is cancelled and a ``cancelled`` outcome
written, in one transaction that aborts if a worker takes the job meanwhile
("cancelled"). Running (or about to be enqueued): the worker is told through
the cancel flag and the control channel ("signalled"). The flag is set in every
case so a worker that dequeues the job concurrently sees it.
"""

from __future__ import annotations

import time
from typing import Literal

import redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import CANCEL_MESSAGE, WRITE_OUTCOME_LUA, Event, ExecutionState, ExecutionStatus, Keys, Outcome

from .errors import ExecutionAlreadyFinished, ExecutionNotFound

CancelResult = Literal["cancelled", "signalled"]
_CANCELLABLE_IN_RQ = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}
_ENDED_IN_RQ = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


def cancel(client: redis.Redis, keys: Keys, retention_seconds: int, execution_id: str) -> CancelResult:
    """Cancel ``execution_id`` (a checked id). Raises ExecutionAlreadyFinished or ExecutionNotFound."""
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.outcome(execution_id), Job.key_for(execution_id))
                return _cancel_watched(client, pipe, keys, retention_seconds, execution_id)
            except (redis.WatchError, InvalidJobOperation):
                # Changed under us (a worker took it, another cancel won): look again.
                pipe.reset()


def _cancel_watched(
    client: redis.Redis, pipe: redis.client.Pipeline, keys: Keys, retention_seconds: int, execution_id: str
) -> CancelResult:
    raw = client.lindex(keys.outcome(execution_id), 0)
    if raw is not None:
        raise ExecutionAlreadyFinished(execution_id, Outcome.model_validate_json(raw).status.value)
    job = Job.fetch_many([execution_id], connection=client, serializer=JSONSerializer)[0]
    if job is None and not client.exists(keys.claim(execution_id)):
        raise ExecutionNotFound(execution_id)
    rq_status = job.get_status(refresh=False) if job is not None else None
    if rq_status in _ENDED_IN_RQ:
        raise ExecutionAlreadyFinished(execution_id, f"rq job {rq_status.value}")
    pipe.multi()
    pipe.set(keys.cancel_flag(execution_id), "1", ex=retention_seconds)
    pipe.publish(keys.control_channel(execution_id), CANCEL_MESSAGE)
    if job is None or rq_status not in _CANCELLABLE_IN_RQ:
        pipe.execute()
        return "signalled"
    job.cancel(pipeline=pipe)
    job.meta["status"] = ExecutionState.CANCELLED.value
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
    pipe.expire(job.key, retention_seconds)  # rq keeps cancelled jobs forever otherwise
    cancelled = Outcome.failure(
        execution_id, ExecutionStatus.CANCELLED, "cancelled", f"cancelled while {rq_status.value}, before it started"
    )
    pipe.eval(  # with the id in the queue's status index, P:ended:QUEUE:cancelled (Keys.ended)
        WRITE_OUTCOME_LUA, 2, keys.outcome(execution_id), keys.ended(job.origin, ExecutionStatus.CANCELLED.value),
        cancelled.model_dump_json(), retention_seconds, execution_id, time.time(),
    )
    pipe.publish(keys.events, Event(execution_id=execution_id, status=ExecutionState.CANCELLED).model_dump_json())
    pipe.execute()
    return "cancelled"
