"""Sweep 4: orphan containers on this daemon.

Containers with a ``dockrq.execution`` label older than ``orphan_grace_seconds``
that nobody owns are removed. Owned means: the execution's rq job (from this
worker's queues) is started by a live worker whose executor id is the
container's (several workers, and nodes, may share one daemon; ownership goes
execution id -> rq job -> worker liveness). Containers of executions whose
outcome exists, whose job is back on the queue or has ended are removed;
containers unknown to this deployment's Redis (another prefix, a standalone
executor, or this deployment's own whose data Redis lost: ``worker.faults.forgotten``)
are left alone here.
"""

from __future__ import annotations

import logging
import time

from rq.job import Job, JobStatus
from rq.utils import as_text

from worker.executor import DAEMON_ERRORS, DockerExecutor, OwnedContainer
from worker.faults import settle
from worker.faults.sweep import ENDED_STATES, QUEUED_STATES, Pass, SweepContext, is_execution

log = logging.getLogger(__name__)


class OrphanContainersSweep:
    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def run(self, p: Pass) -> None:
        if p.docker is None:
            return
        old = self._candidates(p.docker)
        if not old:
            return
        ctx, conn = self.ctx, self.ctx.connection
        with conn.pipeline(transaction=False) as pipe:
            for c in old:
                pipe.exists(ctx.keys.outcome(c.execution_id))
                pipe.hmget(Job.key_for(c.execution_id), ["status", "origin", "worker_name"])
            replies = pipe.execute()
        facts = list(zip(replies[0::2], replies[1::2], strict=True))
        states = ctx.liveness.states([as_text(f[1][2] or b"") for f in facts])
        queues = set(ctx.worker.queue_names())
        for c, (has_outcome, (status, origin, owner)) in zip(old, facts, strict=True):
            status, origin, owner = as_text(status or b""), as_text(origin or b""), as_text(owner or b"")
            if has_outcome:
                self._remove(p, c, "its execution has an outcome")
            elif not status or origin not in queues:
                continue  # not this deployment's: another prefix or queue set, a standalone executor
            elif status == JobStatus.STARTED.value:
                state = states.get(owner)
                if state is None or ctx.liveness.is_dead(state, p.now, p.uptime, by_pid=False):
                    continue  # the dead-workers sweep adopts or reaps it
                if state.executor_id and c.executor_id and state.executor_id != c.executor_id:
                    self._remove(p, c, f"its execution now runs on {state.executor_id}")
            elif status in QUEUED_STATES:
                self._remove(p, c, "its execution is back on the queue", recheck=True)
            elif status in ENDED_STATES:
                job = settle.fetch_job(conn, c.execution_id)
                if job is not None and is_execution(job):
                    ctx.write_lost(ctx.channels(job), c.execution_id, f"the rq job {status} without an outcome")
                self._remove(p, c, f"its rq job is {status}")

    def _candidates(self, docker: DockerExecutor) -> list[OwnedContainer]:
        """Labelled containers past the grace period that this process does not run."""
        try:
            containers = docker.owned_containers()
        except DAEMON_ERRORS as exc:
            log.debug("reaper: listing containers failed: %s", exc)
            return []
        here = self.ctx.running_here()
        wall = time.time()
        return [
            c for c in containers
            if c.execution_id
            and not (c.execution_id in here and c.executor_id == self.ctx.settings.executor_id)
            and wall - c.created >= self.ctx.settings.orphan_grace_seconds
        ]

    def _remove(self, p: Pass, container: OwnedContainer, why: str, *, recheck: bool = False) -> None:
        ctx = self.ctx
        with ctx.locked(container.execution_id) as got:
            if not got:
                return
            if recheck:  # a worker may have taken the job meanwhile (it would adopt this container)
                status = as_text(ctx.connection.hget(Job.key_for(container.execution_id), "status") or b"")
                if status not in QUEUED_STATES:
                    return
            log.warning("reaper: removing orphan container %s of %s: %s", container.short_id, container.execution_id, why)
            ctx.remove(p.docker, [container], p.report)
