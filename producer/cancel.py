"""``Producer.cancel`` / ``AsyncProducer.cancel``: stop an execution wherever it is, in one watched transaction.

Queued, scheduled, deferred (``depends_on``) or waiting for a concurrency slot
(``rate_limited``): the rq job is cancelled and a ``cancelled`` outcome written,
in one transaction WATCHed so it aborts if a worker takes the job meanwhile
("cancelled"). Running (or about to be enqueued): the worker is told through
the cancel flag and the control channel ("signalled"). The flag is set in every
case so a worker that dequeues the job concurrently sees it. A rate-limited
job's cancel is written by ``producer.concurrency`` (rq refuses it through a
caller's pipeline). ``cancel_commands`` builds the transaction from what was
read under WATCH, so the asyncio producer sends exactly the same writes.
"""

from __future__ import annotations

import time
from typing import Literal

import redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import (
    CANCEL_MESSAGE,
    WRITE_OUTCOME_LUA,
    Event,
    ExecutionState,
    ExecutionStatus,
    Keys,
    Outcome,
    attempts_from_meta,
)

from . import concurrency
from .errors import ExecutionAlreadyFinished, ExecutionNotFound

CancelResult = Literal["cancelled", "signalled"]
_CANCELLABLE_IN_RQ = {
    JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED, JobStatus.RATE_LIMITED
}
_ENDED_IN_RQ = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


def cancel(client: redis.Redis, keys: Keys, retention_seconds: int, execution_id: str) -> CancelResult:
    """Cancel ``execution_id`` (a checked id). Raises ExecutionAlreadyFinished or ExecutionNotFound."""
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.outcome(execution_id), Job.key_for(execution_id))
                raw = client.lindex(keys.outcome(execution_id), 0)
                outcome = Outcome.model_validate_json(raw) if raw is not None else None
                job = Job.fetch_many([execution_id], connection=client, serializer=JSONSerializer)[0]
                claimed = job is not None or bool(client.exists(keys.claim(execution_id)))
                result = cancel_commands(pipe, keys, retention_seconds, execution_id, outcome, job, claimed)
                pipe.execute()
                return result
            except (redis.WatchError, InvalidJobOperation):
                # Changed under us (a worker took it, another cancel won): look again.
                pipe.reset()


def cancel_commands(
    pipe: redis.client.Pipeline,
    keys: Keys,
    retention_seconds: int,
    execution_id: str,
    outcome: Outcome | None,
    job: Job | None,
    claimed: bool,
) -> CancelResult:
    """Queue the commands of a cancel into ``pipe`` (it calls ``pipe.multi()``; the caller executes),
    given what was read under WATCH: the outcome, the rq job, whether a job or claim exists.
    Raises ExecutionAlreadyFinished or ExecutionNotFound before anything is queued."""
    if outcome is not None:
        raise ExecutionAlreadyFinished(execution_id, outcome.status.value)
    if job is None and not claimed:
        raise ExecutionNotFound(execution_id)
    rq_status = job.get_status(refresh=False) if job is not None else None
    if rq_status in _ENDED_IN_RQ:
        raise ExecutionAlreadyFinished(execution_id, f"rq job {rq_status.value}")
    pipe.multi()
    pipe.set(keys.cancel_flag(execution_id), "1", ex=retention_seconds)
    pipe.publish(keys.control_channel(execution_id), CANCEL_MESSAGE)
    if job is None or rq_status not in _CANCELLABLE_IN_RQ:
        return "signalled"
    if job.has_rate_limit:  # rq refuses this through our pipeline: producer.concurrency
        concurrency.cancel_limited(job, pipe)
    else:
        job.cancel(pipeline=pipe)
    job.meta["status"] = ExecutionState.CANCELLED.value
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
    pipe.expire(job.key, retention_seconds)  # rq keeps cancelled jobs forever otherwise
    cancelled = Outcome.failure(
        execution_id, ExecutionStatus.CANCELLED, "cancelled", f"cancelled while {rq_status.value}, before it started"
    ).with_attempts(*attempts_from_meta(job.meta))  # a retry waiting for its turn: the earlier attempts
    pipe.eval(  # with the id in the queue's status index, P:ended:QUEUE:cancelled (Keys.ended)
        WRITE_OUTCOME_LUA, 3, keys.outcome(execution_id), keys.ended(job.origin, ExecutionStatus.CANCELLED.value),
        keys.inputs(execution_id),  # never to run: its input archive goes with the outcome's write
        cancelled.model_dump_json(), retention_seconds, execution_id, time.time(),
    )
    pipe.publish(keys.events, Event(execution_id=execution_id, status=ExecutionState.CANCELLED).model_dump_json())
    return "cancelled"
