"""Ending an rq job on behalf of a worker that can no longer do it.

A worker that dies mid-execution leaves its rq job ``started``. Whoever
finishes the execution for it (a restarted worker that adopted the container,
another worker's reaper) ends the rq job the way rq itself would, through the
worker's own success/failure handlers, so the registries, the job's results
and the dashboard agree: the entry leaves the StartedJobRegistry (rq's
abandoned-job cleanup can no longer fail it a second time) and the job lands
in the finished or failed registry, or back on its queue.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.serializers import JSONSerializer
from rq.utils import now

from worker.service.job import DockrqJob

if TYPE_CHECKING:
    from redis import Redis
    from rq.queue import Queue
    from rq.worker import BaseWorker

log = logging.getLogger(__name__)


def fetch_job(connection: Redis, job_id: str) -> Job | None:
    """The rq job ``job_id`` as a dockrq worker's ``DockrqJob`` (its success recorded without
    rq's results stream), or None if it is gone."""
    try:
        return DockrqJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def rq_execution(connection: Redis, job_id: str, execution_id: str, worker_name: str | None) -> Execution:
    """rq's record of one run of a job (its hash may have expired: then a stand-in with the same key)."""
    try:
        execution = Execution.fetch(execution_id, job_id, connection)
    except ValueError:
        execution = Execution(execution_id, job_id, connection, worker_name=worker_name or "")
    if worker_name and not execution.worker_name:
        execution.worker_name = worker_name
    return execution


def started_entry_exists(connection: Redis, queue: Queue, execution: Execution) -> bool:
    return connection.zscore(queue.started_job_registry.key, execution.composite_key) is not None


def finish(worker: BaseWorker, job: Job, queue: Queue, execution: Execution, summary: dict[str, Any]) -> None:
    """Record the job as finished with ``summary`` as its return value (what ``execute`` returns)."""
    job.ended_at = now()
    job.started_at = job.started_at or execution.created_at or job.ended_at
    job._result = summary
    job._status = JobStatus.FINISHED
    worker.handle_job_success(job=job, queue=queue, started_job_registry=queue.started_job_registry, execution=execution)


def fail(worker: BaseWorker, job: Job, queue: Queue, execution: Execution, reason: str) -> None:
    """Record the job as failed, with ``reason`` as its exception text."""
    job.ended_at = now()
    job.started_at = job.started_at or execution.created_at or job.ended_at
    worker.handle_job_failure(job=job, queue=queue, exc_string=reason, execution=execution)


def retry(worker: BaseWorker, job: Job, queue: Queue, execution: Execution, retry: Retry) -> None:
    """Hand the job back to rq for another attempt, as when a job returns rq's ``Retry``
    (``handle_job_retry``: a ``retried`` result, then re-enqueued, or scheduled after its interval)."""
    job.ended_at = now()
    job.started_at = job.started_at or execution.created_at or job.ended_at
    worker.handle_job_retry(
        job=job, queue=queue, retry=retry, started_job_registry=queue.started_job_registry, execution=execution
    )


def requeue(connection: Redis, job: Job, queue: Queue, execution: Execution | None, meta: dict[str, Any]) -> None:
    """Put the job back at the front of its queue (as rq's own retry does), ``meta`` merged in."""
    with connection.pipeline() as pipe:
        if execution is not None:
            execution.delete(job=job, pipeline=pipe)
        job.started_at = None
        job.ended_at = None
        job.worker_name = None
        job.meta.update(meta)
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()


def adopt(connection: Redis, worker: BaseWorker, job: Job, queue: Queue, execution: Execution, ttl: int) -> None:
    """Make ``worker`` the owner of a started job: reapers judge the owner's heartbeat."""
    execution.worker_name = worker.name
    job.worker_name = worker.name
    stamp = now()
    with connection.pipeline() as pipe:
        pipe.hset(execution.key, mapping={"worker_name": worker.name, "last_heartbeat": stamp.timestamp()})
        pipe.expire(execution.key, ttl)
        pipe.hset(job.key, "worker_name", worker.name)
        queue.started_job_registry.add_execution(execution, pipeline=pipe, ttl=ttl, xx=True)
        pipe.execute()


def keep_alive(connection: Redis, queue: Queue, execution: Execution, ttl: int) -> None:
    """Refresh a started entry that is not the worker's own current job (an adopted one)."""
    with connection.pipeline() as pipe:
        execution.heartbeat(queue.started_job_registry, ttl, pipeline=pipe)
        pipe.execute()
