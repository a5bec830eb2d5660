"""A worker through Redis and Docker outages.

rq's loop only survives connection errors while waiting on the queue; anywhere
else (suspension check, maintenance, state and heartbeat writes, job
bookkeeping) it quits the worker. ``DockrqWorker`` rides those out with
``schemas.connections.ride_out_outage``; what is left to do once Redis is back
lives here:

- :func:`settle_after_outage`: a job whose rq bookkeeping an outage cut short is
  finished from its outcome (written, or kept by the runtime past its budget),
  put back on its queue if it never ran, or ended ``error``/``redis_unavailable``.
- :func:`wait_for_docker`: no job is taken off the queue while the daemon does not
  answer; the worker waits for it, heartbeating, and serves again once it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from redis.retry import Retry
from rq.job import JobStatus
from rq.utils import as_text, parse_composite_key

from schemas import ExecutionStatus, Outcome
from schemas.connections import RECONNECT_BACKOFF
from worker.faults import settle
from worker.service import runtime as runtime_module

if TYPE_CHECKING:
    from rq.job import Job
    from rq.queue import Queue

    from worker.service.worker import DockrqWorker

log = logging.getLogger(__name__)

# Before taking a job the daemon must answer; an answer this recent counts (see wait_for_docker).
DOCKER_FRESH_SECONDS = 1.0


def settle_after_outage(worker: DockrqWorker, job: Job, queue: Queue, performed_job_id: str | None) -> None:
    """The job's rq bookkeeping was cut short by a Redis outage (Redis is back): finish it from its outcome.

    ``performed_job_id`` is the job rq got as far as performing (None: it never ran).
    """
    conn = worker.connection
    runtime = runtime_module.current()
    entries = [parse_composite_key(as_text(e)) for e in conn.zrange(queue.started_job_registry.key, 0, -1)]
    executions = [
        e for e in list(worker.executions.values()) if e.job_id == job.id
    ] or [settle.rq_execution(conn, j, x, worker.name) for j, x in entries if j == job.id]
    execution = executions[0] if executions else None
    runtime.write_unwritten(job)  # it ended while Redis was away past its budget
    raw = conn.lindex(runtime.keys.outcome(job.id), 0)
    status = job.get_status(refresh=True)
    if raw is not None:
        outcome = Outcome.model_validate_json(raw)
        if status == JobStatus.STARTED and execution is not None:
            settle.finish(worker, job, queue, execution, outcome.summary())
    elif performed_job_id != job.id and status in (JobStatus.STARTED, JobStatus.QUEUED):
        with conn.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.execute()
        settle.requeue(conn, job, queue, execution, {})
        log.warning("Worker %s: job %s never ran; put back on its queue", worker.name, job.id)
    elif status == JobStatus.STARTED and execution is not None:
        # It ran, but nothing of its outcome is known here (the job died with it).
        channels = runtime.channels(job.id, job)
        if channels.finish(
            Outcome.failure(job.id, ExecutionStatus.ERROR, "redis_unavailable", "Redis was unreachable for too long")
        ):
            log.error("Worker %s: execution %s ended error/redis_unavailable", worker.name, job.id)
        settle.fail(worker, job, queue, execution, "dockrq: Redis was unreachable while the job ended")
    for e in executions:
        worker.executions.pop(e.id, None)
    worker.set_state("idle")


class DaemonAway(Exception):
    """The Docker daemon did not answer a ping (what wait_for_docker retries on)."""


def wait_for_docker(worker: DockrqWorker, holding_stop: Callable[[], AbstractContextManager[None]]) -> None:
    """Return once the Docker daemon answers, heartbeating while it does not.

    ``holding_stop`` is the worker's section in which a stop request is held, not
    raised: a ping never raises, so it would swallow one.
    """
    with holding_stop():
        try:
            executor = runtime_module.current().executor
        except Exception:  # noqa: BLE001 - no client at all: the job will say so
            return
    # The daemon answered a moment ago (the last job's remove, usually): that is the
    # ping's answer already, and saves a daemon round trip per job.
    answered_within = getattr(executor, "answered_within", None)  # test doubles may lack these
    if answered_within is not None and answered_within(DOCKER_FRESH_SECONDS):
        return
    is_installed = getattr(executor, "is_installed", None)
    if is_installed is None:
        return

    def ping() -> None:
        with holding_stop():
            answers = is_installed()
        if not answers:
            raise DaemonAway("the Docker daemon does not answer")

    failed: list[int] = []

    def away(_exc: Exception, failures: int) -> None:
        failed.append(failures)
        if failures == 1:
            log.warning("Worker %s: the Docker daemon does not answer; taking no job until it does", worker.name)
        worker.heartbeat()

    Retry(RECONNECT_BACKOFF, -1, supported_errors=(DaemonAway,)).call_with_retry(ping, away, with_failure_count=True)
    if failed:
        log.info("Worker %s: the Docker daemon is back", worker.name)
