"""What ``status`` and ``ls`` know of an ended execution whose rq job is gone.

The dashboard's Delete (or rq's own ``Job.delete``) removes an ended execution's rq job
while its outcome ``P:exec:ID:outcome`` is kept for the retention. The rq job was where
``status`` read the queue, image, worker and node; what is left of them:

* ``P:exec:ID:dashboard`` (written by the dashboard's Delete: the job's data as its page
  showed it, ``worker/observe/dashboard_gone.py``): the queue (``origin``), the enqueue time
  and the job's meta (``image``, ``worker``, ``node``);
* the status index ``P:ended:QUEUE:STATUS`` (written with every outcome): the queue;
* the outcome's result: the image's digest (or id) when the meta is not there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from schemas import Keys, Outcome


@dataclass(frozen=True)
class KeptJob:
    """The rq job's facts about an execution whose job is gone (each None when unknown)."""

    queue: str | None = None
    image: str | None = None
    worker: str | None = None
    node: str | None = None
    enqueued_at: datetime | None = None


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def from_dashboard(raw: bytes | str | None) -> KeptJob | None:
    """``P:exec:ID:dashboard``'s JSON as a KeptJob; None when absent or unreadable."""
    if not raw:
        return None
    try:
        kept = json.loads(raw)
        meta = json.loads(kept.get("metadata") or "{}")
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(kept, dict) or not isinstance(meta, dict):
        return None
    return KeptJob(
        queue=kept.get("origin") or None, image=meta.get("image") or None, worker=meta.get("worker") or None,
        node=meta.get("node") or None, enqueued_at=_datetime(kept.get("enqueued_at") or kept.get("created_at")),
    )


QUEUES_KEY = "rq:queues"  # rq's set of its queues' keys (rq.Queue.redis_queues_keys)
QUEUE_KEY_PREFIX = "rq:queue:"


def queue_names(replies: Iterable[Any]) -> list[str]:
    """Queue names from the members of rq's ``rq:queues`` set."""
    names = [(r.decode() if isinstance(r, bytes) else str(r)) for r in replies]
    return sorted(n[len(QUEUE_KEY_PREFIX):] for n in names if n.startswith(QUEUE_KEY_PREFIX))


def kept_commands(pipe: Any, keys: Keys, execution_id: str, outcome: Outcome, queues: list[str]) -> None:
    """Queue into ``pipe`` (sync or asyncio redis-py) the reads ``kept_from_replies`` needs."""
    pipe.get(keys.dashboard_view(execution_id))
    for name in queues:
        pipe.zscore(keys.ended(name, outcome.status.value), execution_id)


def kept_from_replies(outcome: Outcome, queues: list[str], replies: list[Any]) -> KeptJob:
    """The KeptJob from the replies to ``kept_commands``: the dashboard's key first, then the
    status index that holds the id for the queue, then the outcome's image digest (or id)."""
    kept = from_dashboard(replies[0]) or KeptJob()
    indexed = next((name for name, score in zip(queues, replies[1:], strict=True) if score is not None), None)
    result = outcome.result
    enqueued = kept.enqueued_at
    if enqueued is None and result is not None and result.started_at is not None and result.queued_seconds is not None:
        started = result.started_at if result.started_at.tzinfo else result.started_at.replace(tzinfo=timezone.utc)
        waited = result.queued_seconds + (result.pull_seconds or 0.0)  # about: creating the container is left out
        enqueued = datetime.fromtimestamp(started.timestamp() - waited, timezone.utc)
    return KeptJob(
        queue=kept.queue or indexed,
        image=kept.image or ((result.image_digest or result.image_id) if result else None),
        worker=kept.worker, node=kept.node, enqueued_at=enqueued,
    )


def kept_job(connection: redis.Redis, keys: Keys, execution_id: str, outcome: Outcome) -> KeptJob:
    """What is kept of the rq job of ``execution_id`` (ended with ``outcome``), looking for its
    queue in every rq queue's status index. Two round trips; Redis errors propagate."""
    queues = queue_names(connection.smembers(QUEUES_KEY))
    with connection.pipeline(transaction=False) as pipe:
        kept_commands(pipe, keys, execution_id, outcome, queues)
        replies = pipe.execute()
    return kept_from_replies(outcome, queues, replies)
