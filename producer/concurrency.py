"""Concurrency limits, producer side: a request's ``concurrency_key``/``concurrency_limit`` is rq's ``RateLimit``.

rq 3 keeps, per key (``rq.rate_limit.RateLimitRegistry``):

- ``rq:rl:KEY`` (hash, field ``concurrency``): the limit, as last submitted;
- ``rq:rl:KEY:allowed`` (sorted set): the jobs holding a slot, queued or started;
- ``rq:rl:KEY:rate_limited`` (sorted set, scored by arrival time in seconds since the
  epoch): the jobs waiting for one, with rq job status ``rate_limited``;
- ``rq:rl-keys`` (set): every key in use.

A job holds its slot from the moment it is let onto its queue until rq records its
end (finished, failed, stopped, or handed back to rq for a retry later); then the
oldest waiting job is let through, by rq's own Lua script, in the same step. So at
most N executions with one key are queued or running, fleet-wide, and they start
in the order they arrived. A worker killed mid-run keeps its slot until the reaper
ends the execution (``lost``, or re-enqueued for a retry, which keeps the slot); rq's
maintenance also frees any slot whose job is no longer queued or started.

Two things differ from calling rq here, both because dockrq writes a submit inside
its own MULTI (and AsyncProducer replays those commands on another connection):
rq's promotion script is sent with EVAL rather than EVALSHA, and a cancel (which rq
refuses to do through a caller's pipeline, ``InvalidJobOperation``) is written here
as rq's ``Job.cancel`` writes it, plus rq's release script in the same transaction,
so the freed slot goes to the next waiting job at once.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from rq.executions import ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.rate_limit import ACQUIRE_AND_ENQUEUE_SCRIPT, RELEASE_STALE_AND_ENQUEUE_SCRIPT, RateLimit, RateLimitRegistry
from rq.utils import current_timestamp, now, utcformat

from schemas import ExecutionRequest

if TYPE_CHECKING:
    from redis.client import Pipeline


_last_arrival = 0.0
_arrival_lock = threading.Lock()


def _arrival() -> float:
    """The job's place in the waiting line: rq scores it by whole seconds (so jobs of one second
    would be let through in id order); dockrq's submits score by the microsecond, strictly
    increasing within this process."""
    global _last_arrival
    with _arrival_lock:
        _last_arrival = max(time.time(), _last_arrival + 1e-6)
        return _last_arrival


def rate_limit(request: ExecutionRequest) -> RateLimit | None:
    """rq's RateLimit for the request, or None when it has no concurrency limit."""
    if request.concurrency_key is None or request.concurrency_limit is None:
        return None
    return RateLimit(request.concurrency_key, request.concurrency_limit)


def enqueue_limited(queue: Queue, job: Job, pipe: Pipeline, *, at_front: bool) -> None:
    """Queue the writes of rq's ``Queue._enqueue_rate_limited_job(job, pipeline=pipe)`` into ``pipe``.

    The job (made by ``queue.create_job(..., rate_limit=...)``) is saved ``rate_limited``
    and waits in ``rq:rl:KEY:rate_limited``; rq's ACQUIRE_AND_ENQUEUE script, run at EXEC,
    lets the oldest waiting jobs onto their queues while fewer than the limit hold a slot
    (``at_front``: onto the head, when its turn comes).
    """
    queue._check_rate_limit_namespace(job)
    assert job.rate_limit_key and job.rate_limit_concurrency
    job.redis_server_version = queue.get_redis_server_version()
    job.origin = queue.name
    if job.timeout is None:
        job.timeout = queue._default_timeout
    registry = RateLimitRegistry(job.rate_limit_key, queue.connection)
    job._status = JobStatus.RATE_LIMITED
    if at_front:
        job.enqueue_at_front = True
    pipe.sadd(queue.redis_queues_keys, queue.key)
    registry.register(job.rate_limit_concurrency, pipe)
    job.save(pipeline=pipe)
    job.cleanup(ttl=job.ttl, pipeline=pipe)
    registry.add_to_rate_limited(job.id, pipe, timestamp=_arrival())
    pipe.eval(
        ACQUIRE_AND_ENQUEUE_SCRIPT, 2, registry.allowed_key, registry.rate_limited_key,
        job.rate_limit_concurrency, current_timestamp(), utcformat(now()),
        Queue.redis_queue_namespace_prefix, Job.redis_job_namespace_prefix,
    )


def cancel_limited(job: Job, pipe: Pipeline) -> None:
    """Queue the writes of rq's ``job.cancel()`` for a rate-limited job into ``pipe`` (in MULTI).

    As rq's cancel: status ``canceled``, off its queue and registries, into the
    CanceledJobRegistry, out of ``rate_limited``; then rq's RELEASE_STALE script frees
    the job's slot (it checks that the job is no longer queued or started and has no
    live rq execution) and lets the next waiting job through.
    """
    key, limit = job.rate_limit_key, job.rate_limit_concurrency
    assert key and limit
    job.rate_limit_key = None  # rq refuses a rate-limited cancel through a caller's pipeline
    try:
        job.cancel(pipeline=pipe)
    finally:
        job.rate_limit_key = key
    registry = RateLimitRegistry(key, job.connection)
    pipe.zrem(registry.rate_limited_key, job.id)
    pipe.eval(
        RELEASE_STALE_AND_ENQUEUE_SCRIPT, 4, registry.allowed_key, registry.rate_limited_key, job.key,
        ExecutionRegistry(job.id, connection=job.connection).key,
        limit, current_timestamp(), utcformat(now()),
        Queue.redis_queue_namespace_prefix, Job.redis_job_namespace_prefix, job.id,
    )
