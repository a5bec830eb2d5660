"""Sweep 5: deferred dependents whose dependencies have decided (rq's DeferredJobRegistry).

dockrq submits a dependent as an rq job with ``depends_on`` and ``allow_failure``
(``producer.dependencies``); the job function checks the dependencies' outcomes
before it runs anything (``worker.execution.dependencies``). But rq never
releases a dependent of a *cancelled* (or stopped) job, nor one deferred after
its dependency already ended. Each pass, every deferred dependent of the
worker's queues is looked at under the execution's reap lock:

- a dependency ended otherwise than ``succeeded`` (or is gone without an
  outcome): the dependent ends ``cancelled`` with error code
  ``dependency_failed`` naming it, and its rq job is cancelled (so its own
  dependents follow on a later pass, transitively);
- every dependency ``succeeded``: it is released through rq's
  ReadyJobRegistry, as rq itself would;
- otherwise it keeps waiting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import WatchError
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.registry import ReadyJobRegistry
from rq.utils import as_text

from schemas import ExecutionStatus, Outcome
from worker.execution.dependencies import DEPENDENCY_FAILED, verdict
from worker.faults.sweep import Pass, SweepContext

if TYPE_CHECKING:
    from rq.queue import Queue

log = logging.getLogger(__name__)


class DeferredDependentsSweep:
    """End or release the deferred dependents of a queue whose dependencies have decided."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def run(self, queue: Queue, p: Pass) -> None:
        ctx, conn = self.ctx, self.ctx.connection
        ids = [as_text(i) for i in conn.zrange(queue.deferred_job_registry.key, 0, -1)]
        for job_id in ids:
            with ctx.locked(job_id) as got:
                if not got:
                    continue
                job = Job.fetch_many([job_id], connection=conn, serializer=queue.serializer)[0]
                if job is None or job.get_status(refresh=False) != JobStatus.DEFERRED or not job._dependency_ids:
                    continue
                decision, _dep, why = verdict(conn, ctx.keys, list(job._dependency_ids))
                if decision == "fail":
                    self._end(job, why)
                    p.report.settled.append(job_id)
                elif decision == "run":
                    self._release(queue, job)

    def _release(self, queue: Queue, job: Job) -> None:
        """deferred -> ready -> queued, as rq's own release does (skipped if rq got there first).

        In the same transaction the job leaves its dependencies' dependents sets: a
        dependency's outcome is written before rq's success transaction, whose
        ``Queue.enqueue_dependents`` moves every dependent in that set to ready without
        looking at its status (rq 3.0), and would enqueue this one a second time (run
        twice: the second run's container-name conflict ended it ``error``)."""
        conn = self.ctx.connection
        ready = ReadyJobRegistry(queue.name, connection=conn, serializer=queue.serializer)
        try:
            with conn.pipeline() as pipe:
                pipe.watch(job.key)
                if as_text(pipe.hget(job.key, "status") or b"") != JobStatus.DEFERRED.value:
                    return
                pipe.multi()
                for dependency_id in job._dependency_ids:
                    pipe.srem(Job.dependents_key_for(dependency_id), job.id)
                ready.register_jobs([job], pipeline=pipe)
                pipe.execute()
        except WatchError:
            return  # changed meanwhile (rq released it, a cancel): next pass looks again
        ready.enqueue_jobs([job.id])
        log.info("execution %s: every dependency succeeded; released", job.id)

    def _end(self, job: Job, why: str) -> None:
        ctx = self.ctx
        channels = ctx.channels(job)
        channels.send_eof()
        written = channels.finish(Outcome.failure(job.id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, why))
        try:
            job.cancel()
        except InvalidJobOperation:
            pass
        ctx.connection.expire(job.key, ctx.settings.retention_seconds)
        if written:
            log.warning("execution %s: cancelled, %s", job.id, why)
