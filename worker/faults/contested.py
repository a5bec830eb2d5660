"""Two workers of one node on one execution: the one that does not own its container steps back.

An execution can be taken by a second worker while a first one runs it: its id enqueued twice
(a double enqueue, a dependent released twice), a job requeued from rq-dashboard while it runs,
a job put back on its queue by the reaper while its first worker was still creating the
container. The container's name derives from the executor id and the execution id
(``worker.executor.spec.container_name``), so on one node the second worker meets the first's
container: found by its labels (``worker.executor.leftover``), or as Docker's 409 name conflict
on create when the first is creating it at that very moment. Before, the second worker followed
or started that container as its own (a twin run), or, when the daemon could not show it yet,
ended the execution ``error`` -- an outcome that could win over the real run's.

Now the container's owner labels (``worker.faults.owner``: ``dockrq.worker``, ``dockrq.host``,
``dockrq.pid``, ``dockrq.pid_ns``) decide, with the rules the reaper applies
(``owner.owner_alive``): a container of another **live** worker process is left to it.
The executor raises ``ExecutionOwnedElsewhere`` without touching the container
(:func:`owner_check` is its ``owner_alive``); the job function writes no outcome and says so in
one log line (:func:`leave_to_owner`); the rq bookkeeping drops only this worker's rq execution
and gives the job back to the owner's name, never failing or finishing it (:func:`step_back`).
A container whose owner is dead (or unlabelled) is followed, as before (adoption).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.utils import as_text, parse_composite_key

from schemas.connections import REDIS_DOWN, ride_out_outage
from worker.executor import ExecutionOwnedElsewhere, OwnedContainer
from worker.executor.owned import OwnerCheck
from worker.faults.liveness import Liveness
from worker.faults.owner import ContainerOwner, owner_alive

if TYPE_CHECKING:
    from redis import Redis
    from rq.queue import Queue

    from worker.execution.run import ExecutionRun
    from worker.service.worker import DockrqWorker

log = logging.getLogger(__name__)

# What the job function's first state change (PULLING) writes into the rq job's meta; a run that
# steps back puts the values from before it back (worker.execution.channels._queue_state).
_META_WRITTEN = ("status", "worker", "image", "pulling_at", "node", "execution_id")
_STEP_BACK_TRIES = 30


def owner_check(connection: Redis, *, reap_after: float, worker_name: str | None) -> OwnerCheck:
    """The executor's ``owner_alive``: the name of another live worker that runs the container's
    execution ("" if unnamed), else None. That is the worker process its owner labels name, when
    it lives and is not this one (``owner.owner_alive``: by PID on this host and PID namespace,
    else by its rq heartbeat), or else a live rq worker whose rq execution of the job is in its
    StartedJobRegistry (an adopter: the labels still name the dead worker it took over from).
    Unlabelled and unadopted, or Redis failing: None (the container is followed, as before)."""
    liveness = Liveness(connection, reap_after=reap_after, worker_name=worker_name)

    def alive(container: OwnedContainer) -> str | None:
        owner = ContainerOwner.from_labels(container.labels)
        try:
            if owner is not None and (owner.worker is None or owner.worker != worker_name):
                states = liveness.states([owner.worker] if owner.worker else [])
                if owner_alive(owner, container.created, liveness, states, liveness.clock):
                    return owner.worker or ""
            return _adopted_by(connection, liveness, container.execution_id, worker_name)
        except RedisError as exc:  # away, or an answer it cannot give: not known alive
            log.warning("execution %s: cannot tell whether its container's owner lives (%s)", container.execution_id, exc)
            return None

    return alive


def _adopted_by(connection: Redis, liveness: Liveness, job_id: str, worker_name: str | None) -> str | None:
    """Another live rq worker that runs ``job_id`` now by rq's own records (its execution in the
    job's StartedJobRegistry names it): an adopter following a dead worker's container, whose
    owner labels still name the dead one (``worker.faults.settle.adopt``)."""
    origin = connection.hget(Job.key_for(job_id), "origin")
    if not origin:
        return None
    registry = StartedJobRegistry(as_text(origin), connection=connection)
    names = []
    for entry in connection.zrange(registry.key, 0, -1):
        entry_job, execution_id = parse_composite_key(as_text(entry))
        if entry_job == job_id:
            name = as_text(connection.hget(Execution(execution_id, job_id, connection).key, "worker_name") or b"")
            if name and name != worker_name:
                names.append(name)
    if not names:
        return None
    now, uptime = liveness.clock()
    states = liveness.states(names)
    return next((n for n in names if n in states and not liveness.is_dead(states[n], now, uptime)), None)


def leave_to_owner(run: ExecutionRun, exc: ExecutionOwnedElsewhere, meta_before: dict[str, Any] | None) -> Any:
    """The job function's side: write no outcome; put back the job meta this run's PULLING
    replaced (``meta_before``: the meta as taken), unless the owner wrote it since; one log line.
    Returns the outcome's summary when the owner has ended it meanwhile (rq finishes the job
    from it, as for any execution taken after its end); else re-raises ``exc`` for
    :func:`step_back`."""
    channels = run.channels
    assert channels is not None
    existing, _ = channels.through_outage(channels.ended_or_cancelled)
    if existing is not None:
        log.info("execution %s: %s, and it has ended (%s)", run.execution_id, exc, existing.status.value)
        return existing.summary()
    job = run.job
    if job is not None and meta_before is not None:
        _restore_meta(job, meta_before, channels.worker, exc)
    log.warning("execution %s: %s; leaving the execution to it (no outcome written here)", run.execution_id, exc)
    raise exc


def _restore_meta(job: Job, before: dict[str, Any], this_worker: str | None, exc: ExecutionOwnedElsewhere) -> None:
    """The meta as it was before this run's PULLING, naming the owner (and its running container)."""
    try:
        current = job.get_meta(refresh=True)
        if current.get("worker") != this_worker:
            return  # the owner wrote it since: it is the owner's
        for key in _META_WRITTEN:
            if key in before:
                current[key] = before[key]
            else:
                current.pop(key, None)
        if exc.owner:
            current["worker"] = exc.owner
        if exc.state == "running" and current.get("status") in (None, "queued", "pulling"):
            current.update(status="running", container_id=exc.container_id)
        job.meta = current
        job.save_meta()
    except REDIS_DOWN as exc:
        log.warning("execution %s: job meta not put back: %s", job.id, exc)


def step_back(worker: DockrqWorker, job: Job, queue: Queue, execution: Execution | None, exc: ExecutionOwnedElsewhere) -> None:
    """rq's side, instead of failing the job: drop this worker's rq execution (its started-registry
    entry and record, rq's ``cleanup_execution``) and give the job's ``worker_name`` back to the
    container's owner, so the reaper judges the owner's heartbeat; the job's status is the owner's
    run's and is left alone. Retried while Redis is away (a few tries; then the reaper's sweeps
    judge the stale entry by this live worker, as any)."""

    def drop() -> None:
        with worker.connection.pipeline() as pipe:
            worker.cleanup_execution(job, pipeline=pipe, execution=execution)
            if exc.owner:
                pipe.hset(job.key, "worker_name", exc.owner)
            pipe.execute()

    try:
        ride_out_outage(drop, retries=_STEP_BACK_TRIES)
    except REDIS_DOWN as err:
        log.error("execution %s: could not drop this worker's rq execution: %s", job.id, err)
