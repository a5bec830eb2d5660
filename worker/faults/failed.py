"""Sweep 3: dockrq jobs rq failed without an outcome (rq's FailedJobRegistry).

rq's own abandoned-job or stuck-job cleanup may fail a job before the reaper
gets to it; such a job gets a ``lost`` outcome, so no waiter hangs. Each failed
job is looked at once (the last ``CHECKED_MAX`` ids are remembered).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rq.job import JobStatus
from rq.utils import as_text

from worker.faults import settle
from worker.faults.sweep import Pass, SweepContext, is_execution

if TYPE_CHECKING:
    from rq.queue import Queue

log = logging.getLogger(__name__)

CHECKED_MAX = 100_000


class FailedJobsSweep:
    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx
        self._checked: dict[str, None] = {}  # insertion-ordered set of job ids already looked at

    def run(self, queue: Queue, p: Pass) -> None:
        ctx, conn = self.ctx, self.ctx.connection
        fresh = [i for i in (as_text(i) for i in conn.zrange(queue.failed_job_registry.key, 0, -1)) if i not in self._checked]
        if not fresh:
            return
        with conn.pipeline(transaction=False) as pipe:
            for job_id in fresh:
                pipe.exists(ctx.keys.outcome(job_id))
            has_outcome = pipe.execute()
        for job_id, has in zip(fresh, has_outcome, strict=True):
            if not has:
                job = settle.fetch_job(conn, job_id)
                if job is not None and is_execution(job) and job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED):
                    message = "rq gave up on the job (its worker died or it was stuck) and no outcome was written"
                    if ctx.write_lost(ctx.channels(job), job_id, message):
                        p.report.lost.append(job_id)
                        log.warning("execution %s: lost (%s)", job_id, message)
            self._checked[job_id] = None
        while len(self._checked) > CHECKED_MAX:
            self._checked.pop(next(iter(self._checked)))
