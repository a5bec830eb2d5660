"""What an execution no worker has taken yet is waiting for, in one line (``dockrq submit``'s notice).

Read from its rq job (``rq.job.JobStatus``):

- ``deferred`` (``--depends-on``): the dependencies that have not ended yet
  (``waiting for dependency A, B to succeed``);
- ``rate_limited`` (``--concurrency-key``): a free slot of its key
  (``waiting for a concurrency slot: at most N with key K run at once``);
- ``scheduled`` (a start time, or a retry's backoff): the time rq's scheduler
  enqueues it (rq's ``ScheduledJobRegistry``);
- anything else (``queued``): a worker on its queue.
"""

from __future__ import annotations

from datetime import timezone

import redis
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from schemas import Keys

_SHOWN_DEPENDENCIES = 3


def waiting_for(connection: redis.Redis, keys: Keys, execution_id: str, queue: str) -> str:
    """The notice for ``execution_id`` (module doc). Raises redis.RedisError when Redis cannot tell."""
    job = Job.fetch_many([execution_id], connection=connection, serializer=JSONSerializer)[0]
    worker = f"waiting for a worker on queue {queue}"
    if job is None:
        return worker
    status = job.get_status(refresh=False)
    if status == JobStatus.DEFERRED:
        return _dependencies(connection, keys, job)
    if status == JobStatus.RATE_LIMITED:
        request = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        key, limit = request.get("concurrency_key"), request.get("concurrency_limit")
        return f"waiting for a concurrency slot: at most {limit} with key {key} run at once"
    if status == JobStatus.SCHEDULED:
        when = ScheduledJobRegistry(job.origin, connection=connection, serializer=JSONSerializer).get_scheduled_time(job)
        return f"scheduled: waiting until {when.astimezone(timezone.utc):%H:%M:%S} UTC, then for a worker on queue {queue}"
    return worker


def _dependencies(connection: redis.Redis, keys: Keys, job: Job) -> str:
    deps = sorted(job.dependency_ids)  # rq's rq:job:ID:dependencies set
    with connection.pipeline(transaction=False) as pipe:
        for dep in deps:
            pipe.exists(keys.outcome(dep))
        ended = pipe.execute() if deps else []
    pending = [d for d, e in zip(deps, ended, strict=True) if not e] or deps
    shown = ", ".join(pending[:_SHOWN_DEPENDENCIES]) + (
        f" and {len(pending) - _SHOWN_DEPENDENCIES} more" if len(pending) > _SHOWN_DEPENDENCIES else ""
    )
    noun = "dependency" if len(pending) == 1 else "dependencies"
    return f"waiting for {noun} {shown} to succeed (--depends-on)"
