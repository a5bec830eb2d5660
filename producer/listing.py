"""Listing recent executions across rq queues, as ``dockrq ls`` shows them.

Sources are rq's own: each queue's list and its registries (started,
scheduled, deferred, finished, failed, canceled) and the executions waiting for a
concurrency slot (rq's rate-limit sets), read without rq's cleanup so listing
never changes state. Every queue of the Redis database is known to rq (the
``rq:queues`` set); jobs that are not dockrq executions (another application's
queue on the same Redis) are left out. Executions whose rq job was deleted
(the dashboard's Delete) while their outcome is kept are listed too, from dockrq's
status index ``P:ended:QUEUE:STATUS`` and what is kept of the job (``producer.kept``),
as ``status`` shows them. A filter by state may drop most of the
newest jobs, so the sources are read deeper until enough rows match or they
hold no more.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timezone

import redis
from rq import Queue
from rq.job import Job
from rq.rate_limit import RateLimitRegistry
from rq.serializers import JSONSerializer

from schemas import JOB_FUNCTION, ExecutionState, ExecutionStatus, Keys, Outcome

from .kept import kept_from_replies

from .status import ExecutionStatusView, build_view

# How many ids per source a filtered listing reads at most before it settles for fewer rows.
MAX_DEPTH = 20_000


def queue_names(connection: redis.Redis) -> list[str]:
    """Every rq queue of this Redis database (rq's ``rq:queues`` set), sorted by name."""
    return sorted(q.name for q in Queue.all(connection=connection, serializer=JSONSerializer))


def list_recent(
    connection: redis.Redis,
    keys: Keys,
    queues: Iterable[Queue],
    limit: int,
    states: Collection[ExecutionState] | None = None,
) -> list[ExecutionStatusView]:
    """The newest ``limit`` dockrq executions of ``queues`` (newest first), only those in
    ``states`` when given. Raises nothing of its own; Redis errors propagate."""
    queues = list(queues)
    wanted = set(states) if states else None
    depth = limit
    while True:
        ids, deeper = _candidates(queues, depth)
        waiting, more = _rate_limited(connection, depth)
        ids, deeper = ids + [i for i in waiting if i not in set(ids)], deeper or more
        ended, more = _ended(connection, keys, queues, depth)
        deeper = deeper or more
        origins = {q.name for q in queues}
        views = [
            v for v in _views(connection, keys, ids + [i for i in ended if i not in set(ids)], origins, ended)
            if wanted is None or v.state in wanted
        ]
        if len(views) >= limit or not deeper or depth >= MAX_DEPTH:
            epoch = datetime.min.replace(tzinfo=timezone.utc)
            views.sort(key=lambda v: v.enqueued_at or epoch, reverse=True)
            return views[:limit]
        depth = min(depth * 4, MAX_DEPTH)


def _candidates(queues: list[Queue], depth: int) -> tuple[list[str], bool]:
    """Up to ``depth`` newest ids of each source; and whether any source may hold more."""
    ids: dict[str, None] = {}
    deeper = False
    for q in queues:
        queued = q.get_job_ids(offset=-depth)
        deeper = deeper or len(queued) >= depth
        ids.update(dict.fromkeys(reversed(queued)))
        for registry in (
            q.started_job_registry,
            q.scheduled_job_registry,
            q.deferred_job_registry,  # waiting for --depends-on
            q.finished_job_registry,
            q.failed_job_registry,
            q.canceled_job_registry,
        ):
            found = registry.get_job_ids(0, depth - 1, desc=True, cleanup=False)
            deeper = deeper or len(found) >= depth
            ids.update(dict.fromkeys(found))
    return list(ids), deeper


def _is_execution(job: Job) -> bool:
    try:
        return job.func_name == JOB_FUNCTION
    except Exception:  # noqa: BLE001 - another application's job (pickled, unreadable): not ours
        return False


def _rate_limited(connection: redis.Redis, depth: int) -> tuple[list[str], bool]:
    """The newest ``depth`` ids waiting for a concurrency slot under each of rq's rate-limit
    keys (``rq:rl-keys``, ``rq:rl:KEY:rate_limited``: ``rq.rate_limit.RateLimitRegistry``).
    They belong to no queue's registry until a slot frees; the caller keeps its queues' own."""
    ids: list[str] = []
    deeper = False
    for key in sorted(k.decode() for k in connection.smembers(RateLimitRegistry.rl_keys_key)):
        found = connection.zrevrange(RateLimitRegistry(key, connection).rate_limited_key, 0, depth - 1)
        deeper = deeper or len(found) >= depth
        ids.extend(i.decode() for i in found)
    return ids, deeper


def _ended(connection: redis.Redis, keys: Keys, queues: list[Queue], depth: int) -> tuple[dict[str, str], bool]:
    """``{id: queue}`` of the newest ``depth`` executions of each status index of ``queues``
    (``P:ended:QUEUE:STATUS``); and whether any index may hold more."""
    sources = [(q.name, keys.ended(q.name, s.value)) for q in queues for s in ExecutionStatus]
    with connection.pipeline(transaction=False) as pipe:
        for _, key in sources:
            pipe.zrevrange(key, 0, depth - 1)
        replies = pipe.execute()
    found: dict[str, str] = {}
    for (queue, _), ids in zip(sources, replies, strict=True):
        found.update((i.decode() if isinstance(i, bytes) else i, queue) for i in ids)
    return found, any(len(ids) >= depth for ids in replies)


def _views(
    connection: redis.Redis, keys: Keys, ids: list[str], origins: Collection[str], ended: dict[str, str]
) -> list[ExecutionStatusView]:
    fetched = Job.fetch_many(ids, connection=connection, serializer=JSONSerializer)
    jobs = [j for j in fetched if j and _is_execution(j) and j.origin in origins]
    gone = [i for i, j in zip(ids, fetched, strict=True) if j is None and i in ended]  # rq job deleted
    with connection.pipeline(transaction=False) as pipe:
        for execution_id in [j.id for j in jobs] + gone:
            pipe.lindex(keys.outcome(execution_id), 0)
        for execution_id in gone:
            pipe.get(keys.dashboard_view(execution_id))
        replies = pipe.execute()
    outcomes = [Outcome.model_validate_json(raw) if raw else None for raw in replies[: len(jobs) + len(gone)]]
    views = [build_view(job.id, job, outcome) for job, outcome in zip(jobs, outcomes, strict=False)]
    for execution_id, outcome, raw_kept in zip(gone, outcomes[len(jobs):], replies[len(jobs) + len(gone):], strict=True):
        if outcome is None:  # expired since the index was read (or the index entry outlived it)
            continue
        kept = kept_from_replies(outcome, [ended[execution_id]], [raw_kept, 1])
        views.append(build_view(execution_id, None, outcome, kept))
    return views
