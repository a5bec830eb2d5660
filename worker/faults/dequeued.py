"""Sweep 2: jobs a worker took off the queue but died before starting (rq's intermediate queue).

A job in the intermediate queue that is not in the started registry and still
``queued`` for ``reap_after_seconds`` is put back at the front of its queue.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rq.job import JobStatus
from rq.utils import as_text, parse_composite_key

from worker.faults import settle
from worker.faults.sweep import Pass, SweepContext, is_execution

if TYPE_CHECKING:
    from rq.queue import Queue

log = logging.getLogger(__name__)


class DequeuedJobsSweep:
    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx
        self._seen: dict[str, float] = {}  # job id -> when this sweep first saw it waiting

    def run(self, queue: Queue, p: Pass) -> None:
        conn = self.ctx.connection
        waiting = [as_text(i) for i in conn.lrange(queue.intermediate_queue_key, 0, -1)]
        seen_now = time.monotonic()
        for job_id in list(self._seen):
            if job_id not in waiting:
                del self._seen[job_id]
        if not waiting:
            return
        started = {parse_composite_key(as_text(e))[0] for e in conn.zrange(queue.started_job_registry.key, 0, -1)}
        for job_id in waiting:
            if job_id in started:
                continue
            first = self._seen.setdefault(job_id, seen_now)
            if seen_now - first >= self.ctx.settings.reap_after_seconds:
                self._put_back(queue, job_id, p)

    def _put_back(self, queue: Queue, job_id: str, p: Pass) -> None:
        conn = self.ctx.connection
        with self.ctx.locked(job_id) as got:
            if not got:
                return
            job = settle.fetch_job(conn, job_id)
            if job is None or job.get_status(refresh=False) != JobStatus.QUEUED or not is_execution(job):
                return  # finished jobs linger there with several queues: rq cleans those
            with conn.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                queue._enqueue_job(job, pipeline=pipe, at_front=True)
                pipe.execute()
            self._seen.pop(job_id, None)
            p.report.unstuck.append(job_id)
            log.warning("execution %s: taken off the queue by a worker that died before starting it; re-enqueued", job_id)
