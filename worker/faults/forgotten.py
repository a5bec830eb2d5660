"""Sweep 6: this deployment's containers whose executions Redis has forgotten.

Redis restarted without persistence (or the keys expired, or a failover lost
unreplicated writes) while executions ran: their containers live on, and Redis
knows neither the rq job nor the outcome. The orphans sweep leaves containers
unknown to Redis alone, since they may be another deployment's (another prefix
or Redis on the same daemon) or a standalone executor's. This sweep removes the
ones labelled with *this* deployment's id (``dockrq.deployment``,
worker.config.deployment) once they are older than ``orphan_grace_seconds``
and their owner worker is not alive, re-checking Redis under the execution's
reap lock first; containers of another deployment are never touched.

The owner is the worker process named by the container's owner labels
(``worker.faults.owner``): on this host and PID namespace it is judged by its
PID (alive: the container is left to it, it writes the outcome or notices the
loss itself), elsewhere by its rq worker hash's heartbeat as the orphans sweep
judges a started job's owner; a container without owner labels has none alive.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq.job import Job

from schemas import Keys
from worker.config.deployment import LABEL_DEPLOYMENT
from worker.executor import DAEMON_ERRORS, OwnedContainer
from worker.faults.owner import ContainerOwner, owner_alive
from worker.faults.sweep import Pass, SweepContext

log = logging.getLogger(__name__)

FORGOTTEN = "Redis no longer knows its execution (no rq job, no outcome: data lost or expired)"


def forgotten(connection: Any, keys: Keys, execution_id: str) -> bool:
    """Whether Redis has neither the rq job nor the outcome of ``execution_id`` (one round trip)."""
    return not connection.exists(Job.key_for(execution_id), keys.outcome(execution_id))


class ForgottenContainersSweep:
    """``run(p)``: remove this deployment's containers (past the orphan grace) whose executions
    Redis no longer knows and whose owner worker is not alive (``worker.faults.owner``). Only
    while this worker's daemon answers (``p.docker``)."""

    def __init__(self, ctx: SweepContext) -> None:
        self.ctx = ctx

    def run(self, p: Pass) -> None:
        if p.docker is None:
            return
        ours = self._candidates(p)
        if not ours:
            return
        ctx = self.ctx
        with ctx.connection.pipeline(transaction=False) as pipe:
            for c in ours:
                pipe.exists(Job.key_for(c.execution_id), ctx.keys.outcome(c.execution_id))
            known = pipe.execute()
        unknown = [c for c, count in zip(ours, known, strict=True) if not count]  # known: the orphans sweep's
        owners = {c.id: ContainerOwner.from_labels(c.labels) for c in unknown}
        states = ctx.liveness.states([o.worker for o in owners.values() if o is not None and o.worker])
        for c in unknown:
            if owner_alive(owners[c.id], c.created, ctx.liveness, states, lambda: (p.now, p.uptime)):
                continue  # its owner runs it: it writes the outcome (or notices the loss) and removes it
            with ctx.locked(c.execution_id) as got:
                if not got or not forgotten(ctx.connection, ctx.keys, c.execution_id):
                    continue  # someone else acts on it, or it was just submitted again
                log.warning("reaper: removing container %s of %s: %s", c.short_id, c.execution_id, FORGOTTEN)
                ctx.remove(p.docker, [c], p.report)

    def _candidates(self, p: Pass) -> list[OwnedContainer]:
        """This deployment's labelled containers past the grace period that this process does not run."""
        try:
            containers = p.docker.owned_containers() if p.docker is not None else []
        except DAEMON_ERRORS as exc:
            log.debug("reaper: listing containers failed: %s", exc)
            return []
        s = self.ctx.settings
        deployment, wall, here = s.deployment_id, time.time(), self.ctx.running_here()
        return [
            c for c in containers
            if c.execution_id
            and c.labels.get(LABEL_DEPLOYMENT) == deployment
            and not (c.execution_id in here and c.executor_id == s.executor_id)
            and wall - c.created >= s.orphan_grace_seconds
        ]
