"""Cancelling an execution (``Producer.cancel``; its commands are shared with ``AsyncProducer``).

Queued, scheduled, deferred or waiting for a concurrency slot: the rq job is
cancelled and a ``cancelled`` outcome written in one transaction, WATCHed so it
aborts if a worker takes the job meanwhile. Running: the worker is told through
the cancel flag and the control channel. A rate-limited job's cancel is written
by ``producer.concurrency`` (rq refuses it through a caller's pipeline).
"""

from __future__ import annotations

from typing import Literal

import redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from schemas import CANCEL_MESSAGE, WRITE_OUTCOME_LUA, ExecutionState, ExecutionStatus, Keys, Outcome, attempts_from_meta

from . import concurrency
from .errors import ExecutionAlreadyFinished, ExecutionNotFound

CancelResult = Literal["cancelled", "signalled"]
_CANCELLABLE_IN_RQ = {
    JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED, JobStatus.RATE_LIMITED
}


class Canceller:
    """The cancel half of ``Producer`` (a mixin): needs ``_client``, ``keys``, ``retention_seconds``,
    ``_check_id``, ``_outcome``, ``_fetch_job`` and ``_publish_event``."""

    _client: redis.Redis
    keys: Keys
    retention_seconds: int

    def cancel(self, execution_id: str) -> CancelResult:
        """Cancel an execution.

        Queued or scheduled: the rq job is cancelled and a ``cancelled`` outcome
        written, in one transaction that aborts if a worker takes the job
        meanwhile ("cancelled"). Running (or about to be enqueued): the worker is
        told through the flag and the control channel ("signalled"). The flag is
        set in every case so a worker that dequeues the job concurrently sees it.
        Raises ExecutionAlreadyFinished or ExecutionNotFound.
        """
        self._check_id(execution_id)
        outcome_key = self.keys.outcome(execution_id)
        job_key = Job.key_for(execution_id)
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(outcome_key, job_key)
                    return self._cancel_watched(pipe, execution_id)
                except (redis.WatchError, InvalidJobOperation):
                    # Changed under us (a worker took it, another cancel won): look again.
                    pipe.reset()

    def _cancel_watched(self, pipe: redis.client.Pipeline, execution_id: str) -> CancelResult:
        outcome = self._outcome(execution_id)
        job = self._fetch_job(execution_id)
        claimed = job is not None or bool(self._client.exists(self.keys.claim(execution_id)))
        result = self.cancel_commands(pipe, execution_id, outcome, job, claimed)
        pipe.execute()
        return result

    def cancel_commands(
        self, pipe: redis.client.Pipeline, execution_id: str, outcome: Outcome | None, job: Job | None, claimed: bool
    ) -> CancelResult:
        """Queue the commands of a cancel into ``pipe`` (it calls ``pipe.multi()``; the caller executes),
        given what was read under WATCH. Shared with AsyncProducer. Raises as ``cancel``."""
        if outcome is not None:
            raise ExecutionAlreadyFinished(execution_id, outcome.status.value)
        if job is None and not claimed:
            raise ExecutionNotFound(execution_id)
        rq_status = job.get_status(refresh=False) if job is not None else None
        if rq_status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            raise ExecutionAlreadyFinished(execution_id, f"rq job {rq_status.value}")
        pipe.multi()
        pipe.set(self.keys.cancel_flag(execution_id), "1", ex=self.retention_seconds)
        pipe.publish(self.keys.control_channel(execution_id), CANCEL_MESSAGE)
        if job is None or rq_status not in _CANCELLABLE_IN_RQ:
            return "signalled"
        if job.has_rate_limit:  # rq refuses this through our pipeline: producer.concurrency
            concurrency.cancel_limited(job, pipe)
        else:
            job.cancel(pipeline=pipe)
        job.meta["status"] = ExecutionState.CANCELLED.value
        pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
        pipe.expire(job.key, self.retention_seconds)  # rq keeps cancelled jobs forever otherwise
        cancelled = Outcome.failure(
            execution_id, ExecutionStatus.CANCELLED, "cancelled", f"cancelled while {rq_status.value}, before it started"
        ).with_attempts(*attempts_from_meta(job.meta))  # a retry waiting for its turn: the earlier attempts
        pipe.eval(
            WRITE_OUTCOME_LUA, 1, self.keys.outcome(execution_id), cancelled.model_dump_json(), self.retention_seconds
        )
        self._publish_event(pipe, execution_id, ExecutionState.CANCELLED.value)
        return "cancelled"
