"""The rq side of an image pull: progress on the events topic, and the times of an execution.

The executor hands pull progress (``worker.executor.PullProgress``) to a callback
from its pulling thread, a few times a second at most; :class:`PullPublisher`
turns each into a ``pulling`` event with a ``progress`` document (``schemas.PullReport``)
on ``P:events``. A Redis failure drops that one report: progress is advisory and
never holds up or breaks a pull. Nothing about credentials is in it.
"""

from __future__ import annotations

import inspect
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from schemas import Event, ExecutionState, PullReport

if TYPE_CHECKING:
    from rq.job import Job

    from worker.executor import PullProgress

    from .channels import ExecutionChannels

log = logging.getLogger(__name__)


class PullPublisher:
    """Publishes one execution's pull progress on ``P:events`` (status ``pulling``)."""

    def __init__(self, channels: ExecutionChannels) -> None:
        self.channels = channels

    def __call__(self, progress: PullProgress) -> None:
        report = PullReport(
            image=progress.image, layers_done=progress.layers_done, layers_total=progress.layers_total,
            bytes_done=progress.bytes_done, bytes_total=progress.bytes_total, done=progress.done,
        )
        event = Event(
            execution_id=self.channels.execution_id, status=ExecutionState.PULLING, worker=self.channels.worker,
            progress=report,
        )
        try:
            self.channels.connection.publish(self.channels.keys.events, event.model_dump_json())
        except RedisError as exc:
            log.debug("execution %s: pull progress not published: %s", self.channels.execution_id, exc)


def start_with_progress(executor: Any, request: Any, publisher: PullPublisher) -> None:
    """``executor.start(request, progress=publisher)``, or without progress for an executor
    (a stand-in in tests) whose ``start`` takes none."""
    try:
        takes_progress = "progress" in inspect.signature(executor.start).parameters
    except (TypeError, ValueError):
        takes_progress = False
    if takes_progress:
        executor.start(request, progress=publisher)
    else:
        executor.start(request)


def queued_seconds(job: Job | None, taken: float) -> float | None:
    """Seconds from the rq job's enqueue (``enqueued_at``, UTC) to ``taken`` (epoch seconds)."""
    enqueued = getattr(job, "enqueued_at", None) if job is not None else None
    if not isinstance(enqueued, datetime):
        return None
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=timezone.utc)
    return max(0.0, taken - enqueued.timestamp())


def now() -> float:
    return time.time()
