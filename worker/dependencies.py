"""Dependencies, worker side: an execution runs only once all it depends on have ``succeeded``.

dockrq submits a dependent as an rq job with ``depends_on`` and rq's
``allow_failure`` (``producer.dependencies``). rq releases a dependent when its
dependencies' rq jobs end (finished, or failed: a lost worker, a refused job),
but a dockrq job *finishes* in rq whatever its container did; the outcome key
is the truth. So:

- ``blocking_outcome`` (called by the job function before anything else): the
  dependencies' outcomes are read; the first that is not ``succeeded`` ends
  this execution ``cancelled`` with error code ``dependency_failed`` naming it,
  without a container. That outcome in turn blocks this execution's own
  dependents (transitively).
- ``sweep`` (each reaper pass, every queue of the worker): rq never releases a
  dependent of a *cancelled* (or stopped) job, nor one deferred after its
  dependency already ended. Each deferred dependent is looked at under the
  execution's reap lock: a dependency ended otherwise than ``succeeded`` (or
  gone without an outcome) ends it as above and cancels its rq job; all
  ``succeeded`` releases it through rq's ReadyJobRegistry, as rq itself would.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.registry import ReadyJobRegistry
from rq.utils import as_text

from schemas import ExecutionStatus, Keys, Outcome

if TYPE_CHECKING:
    from redis import Redis
    from rq.queue import Queue

log = logging.getLogger(__name__)

# A dependency whose rq job ended releases its dependents right after its outcome is
# written; one without an outcome yet (written late, after a Redis outage) is waited for this long.
OUTCOME_WAIT_SECONDS = 10.0
DEPENDENCY_FAILED = "dependency_failed"


def _verdict(connection: Redis, keys: Keys, deps: list[str]) -> tuple[str, str | None, str]:
    """("run" | "wait" | "fail", the dependency that decided, why) from the dependencies' outcomes."""
    with connection.pipeline(transaction=False) as pipe:
        for dep in deps:
            pipe.lindex(keys.outcome(dep), 0)
            pipe.exists(Job.key_for(dep))
        replies = pipe.execute()
    waiting = None
    for dep, raw, has_job in zip(deps, replies[0::2], replies[1::2], strict=True):
        if raw is not None:
            status = Outcome.model_validate_json(raw).status
            if status != ExecutionStatus.SUCCEEDED:
                return "fail", dep, f"dependency {dep} ended {status.value}"
        elif not has_job:
            return "fail", dep, f"dependency {dep} no longer exists (no rq job, no outcome)"
        elif waiting is None:
            waiting = dep
    if waiting is not None:
        return "wait", waiting, f"dependency {waiting} has not ended"
    return "run", None, ""


def blocking_outcome(connection: Redis, keys: Keys, job: Job | None, execution_id: str) -> Outcome | None:
    """The ``cancelled``/``dependency_failed`` outcome this execution must end with instead of running, or None."""
    deps = list(getattr(job, "_dependency_ids", None) or [])
    if not deps:
        return None
    deadline = time.monotonic() + OUTCOME_WAIT_SECONDS
    while True:
        verdict, _dep, why = _verdict(connection, keys, deps)
        if verdict == "run":
            return None
        if verdict == "fail":
            return Outcome.failure(execution_id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, why)
        if time.monotonic() > deadline:
            return Outcome.failure(
                execution_id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, f"{why} (released by rq without an outcome)"
            )
        time.sleep(0.5)


def sweep(reaper: Any, queue: Queue, report: Any) -> None:
    """End or release the deferred dependents of ``queue`` whose dependencies have decided (module doc)."""
    connection: Redis = reaper.connection
    registry = queue.deferred_job_registry
    ids = [as_text(i) for i in connection.zrange(registry.key, 0, -1)]
    for job_id in ids:
        with reaper._locked(job_id) as got:
            if not got:
                continue
            job = Job.fetch_many([job_id], connection=connection, serializer=queue.serializer)[0]
            if job is None or job.get_status(refresh=False) != JobStatus.DEFERRED or not job._dependency_ids:
                continue
            verdict, _dep, why = _verdict(connection, reaper.keys, list(job._dependency_ids))
            if verdict == "fail":
                _end(reaper, job, why)
                report.settled.append(job_id)
            elif verdict == "run":
                _release(connection, queue, job)


def _release(connection: Redis, queue: Queue, job: Job) -> None:
    """deferred -> ready -> queued, as rq's own release does (skipped if rq got there first)."""
    ready = ReadyJobRegistry(queue.name, connection=connection, serializer=queue.serializer)
    try:
        with connection.pipeline() as pipe:
            pipe.watch(job.key)
            if as_text(pipe.hget(job.key, "status") or b"") != JobStatus.DEFERRED.value:
                return
            pipe.multi()
            ready.register_jobs([job], pipeline=pipe)
            pipe.execute()
    except WatchError:
        return  # changed meanwhile (rq released it, a cancel): next pass looks again
    ready.enqueue_jobs([job.id])
    log.info("execution %s: every dependency succeeded; released", job.id)


def _end(reaper: Any, job: Job, why: str) -> None:
    channels = reaper._channels(job)
    channels.send_eof()
    written = channels.finish(Outcome.failure(job.id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, why))
    try:
        job.cancel()
    except InvalidJobOperation:
        pass
    reaper.connection.expire(job.key, reaper.settings.retention_seconds)
    if written:
        log.warning("execution %s: cancelled, %s", job.id, why)
