"""Sweep 1: started jobs of dead workers (rq's StartedJobRegistry of the worker's queues).

An entry whose owner (rq's execution record, else the job's ``worker_name``) is
dead by ``worker.faults.liveness`` is taken under the execution's reap lock, then:

- its outcome exists (the owner died after writing it): the rq job is settled as
  finished and any container left on this daemon removed;
- a live container of the execution with *this worker's executor id* is on this
  daemon: the execution is **adopted** (``worker.faults.adoption``) and followed to its end;
- otherwise every container of the execution on this daemon is stopped and
  removed, and the execution is re-enqueued at the front of its queue if its
  request allows ``retries`` (attempts are counted in the job's meta), or gets a
  ``lost`` outcome (code ``worker_lost``) and the rq job fails.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rq.executions import Execution
from rq.job import Job
from rq.utils import as_text, parse_composite_key

from schemas import ExecutionState
from worker.executor import DAEMON_ERRORS, OwnedContainer
from worker.faults import settle
from worker.faults.sweep import Pass, SweepContext, as_int, is_execution, retries_allowed

if TYPE_CHECKING:
    from rq.queue import Queue

    from worker.faults.liveness import WorkerState

log = logging.getLogger(__name__)


class DeadWorkersSweep:
    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def run(self, queue: Queue, p: Pass) -> None:
        ctx = self.ctx
        conn = ctx.connection
        entries = [parse_composite_key(as_text(e)) for e in conn.zrange(queue.started_job_registry.key, 0, -1)]
        if not entries:
            return
        adopted = ctx.adoptions.active()
        entries = [(j, x) for j, x in entries if j not in adopted]
        with conn.pipeline(transaction=False) as pipe:
            for job_id, execution_id in entries:
                pipe.hget(Execution(execution_id, job_id, conn).key, "worker_name")
                pipe.hget(Job.key_for(job_id), "worker_name")
            replies = pipe.execute()
        owners = [as_text(a or b or b"") for a, b in zip(replies[0::2], replies[1::2], strict=True)]
        states = ctx.liveness.states(owners)
        for (job_id, execution_id), owner in zip(entries, owners, strict=True):
            state = states.get(owner)
            # Only a would-be adopter (same executor id) may judge by PID at once.
            adopter = state is not None and state.executor_id == ctx.settings.executor_id
            if state is None or not ctx.liveness.is_dead(state, p.now, p.uptime, by_pid=adopter):
                continue
            with ctx.locked(job_id) as got:
                if got:
                    self._reap(queue, job_id, execution_id, state, p)

    def _reap(self, queue: Queue, job_id: str, execution_id: str, owner: WorkerState, p: Pass) -> None:
        ctx, conn = self.ctx, self.ctx.connection
        job = settle.fetch_job(conn, job_id)
        execution = settle.rq_execution(conn, job_id, execution_id, owner.name)
        if not settle.started_entry_exists(conn, queue, execution):
            return  # settled meanwhile
        if job is None:
            conn.zrem(queue.started_job_registry.key, execution.composite_key)
            return
        if execution.worker_name != owner.name or not is_execution(job):
            return  # re-pointed by an adopter meanwhile / not a dockrq job: rq's business
        channels = ctx.channels(job)
        outcome, _ = channels.ended_or_cancelled()
        docker = p.docker
        if docker is None and outcome is None:
            return  # cannot tell whether its container runs here: next pass
        try:
            containers = docker.owned_containers(job_id) if docker is not None else []
        except DAEMON_ERRORS as exc:
            if outcome is None:
                log.warning("reaper: cannot list %s's containers (%s); next pass", job_id, exc)
                return
            docker, containers = None, []
        if outcome is not None:
            ctx.remove(docker, containers, p.report)
            settle.finish(ctx.worker, job, queue, execution, outcome.summary())
            p.report.settled.append(job_id)
            log.warning("execution %s: worker %s died after its outcome; rq job settled", job_id, owner.name)
            return
        mine = [c for c in containers if c.executor_id == ctx.settings.executor_id and c.live]
        if mine:
            if getattr(ctx.worker, "_stop_requested", False):
                return  # shutting down: leave it to the next worker of this node (or a reaper)
            ctx.adoptions.adopt(job, queue, execution, mine[0])
            p.report.adopted.append(job_id)
            return
        ctx.remove(docker, containers, p.report, grace=ctx.settings.stop_grace_seconds)
        self._requeue_or_lose(queue, job, execution, owner, containers, p)

    def _requeue_or_lose(
        self, queue: Queue, job: Job, execution: Execution, owner: WorkerState, containers: list[OwnedContainer], p: Pass
    ) -> None:
        ctx = self.ctx
        attempts = as_int(job.meta.get("attempts"), 1)
        retries = retries_allowed(job)
        if attempts <= retries:
            settle.requeue(
                ctx.connection, job, queue, execution,
                {"attempts": attempts + 1, "status": ExecutionState.QUEUED.value, "lost_worker": owner.name},
            )
            ctx.publish(job.id, ExecutionState.QUEUED)
            p.report.requeued.append(job.id)
            log.warning(
                "execution %s: worker %s lost; re-enqueued (attempt %d of %d)", job.id, owner.name, attempts + 1, retries + 1
            )
            return
        where = (
            f"its container was removed from {ctx.settings.executor_id}'s daemon"
            if containers else "no container of it on this daemon"
        )
        message = (
            f"worker {owner.name} died while running the execution (no heartbeat for "
            f"{ctx.settings.reap_after_seconds:g}s); {where}"
        )
        ctx.write_lost(ctx.channels(job), job.id, message)
        settle.fail(ctx.worker, job, queue, execution, f"dockrq: {message}")
        p.report.lost.append(job.id)
        log.warning("execution %s: lost (%s)", job.id, message)
