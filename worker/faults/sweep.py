"""What every reaper sweep works with: the worker's Redis, the reap lock, lost outcomes,
container removal through the executor, and the report of a pass.

A sweep (``worker.faults.dead_workers``, ``dequeued``, ``failed``, ``orphans``)
takes the execution's reap lock (``SET P:exec:ID:reaping NX PX``) before it
changes anything, so two workers' reapers, or a reaper and an adopter, never act
on one execution at once. Outcomes are written with the first-writer-wins
script, so a reaper and a late worker never give one execution two outcomes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus

from schemas import JOB_FUNCTION, Event, ExecutionState, ExecutionStatus, Outcome
from worker.execution.channels import ExecutionChannels
from worker.execution.logs import LogResume
from worker.executor import DAEMON_ERRORS, DockerExecutor, DockerUnavailableError, OwnedContainer

if TYPE_CHECKING:
    import redis

    from worker.faults.adoption import Adoptions
    from worker.faults.liveness import Liveness
    from worker.service.runtime import WorkerRuntime
    from worker.service.worker import DockrqWorker

log = logging.getLogger(__name__)

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
QUEUED_STATES = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value}
ENDED_STATES = {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}
# The longest stop grace a reaper gives a dead worker's container when this worker's policy sets no
# DOCKRQ_MAX_STOP_TIMEOUT_SECONDS (the same bound as DOCKRQ_STOP_GRACE_SECONDS's).
UNBOUNDED_STOP_GRACE_SECONDS = 3600.0


@dataclass
class ReapReport:
    """What one pass did (execution ids; short container ids), for logs and tests."""

    adopted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    unstuck: list[str] = field(default_factory=list)
    removed_containers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass
class Pass:
    """One pass's view: Redis's clock and uptime (worker.faults.liveness), the executor if its
    daemon answers (None: nothing on Docker is touched), and the report.

    The clock (``TIME`` and ``INFO server``) is read the first time a sweep asks for
    ``now`` or ``uptime``: a pass that finds nothing to judge (an idle fleet's) never reads it.
    """

    clock: Callable[[], tuple[float, float]]
    docker: DockerExecutor | None
    report: ReapReport

    @cached_property
    def _read_clock(self) -> tuple[float, float]:
        return self.clock()

    @property
    def now(self) -> float:
        return self._read_clock[0]

    @property
    def uptime(self) -> float:
        return self._read_clock[1]


class SweepContext:
    """Shared by the sweeps of one worker's reaper."""

    def __init__(self, worker: DockrqWorker, runtime: WorkerRuntime, liveness: Liveness, adoptions: Adoptions) -> None:
        self.worker = worker
        self.runtime = runtime
        self.settings = runtime.settings
        self.connection: redis.Redis = worker.connection
        self.keys = runtime.keys
        self.liveness = liveness
        self.adoptions = adoptions
        self._release = self.connection.register_script(_RELEASE_LUA)

    @contextmanager
    def locked(self, execution_id: str) -> Iterator[bool]:
        """The execution's reap lock, if no one else holds it (yields whether it was got)."""
        key, token = self.keys.reap_lock(execution_id), uuid.uuid4().hex
        ttl_ms = int((self.longest_stop_grace + 60) * 1000)  # outlasts a container's stop (remove)
        got = bool(self.connection.set(key, token, nx=True, px=ttl_ms))
        try:
            yield got
        finally:
            if got:
                self._release(keys=[key], args=[token])

    def channels(self, job: Job) -> ExecutionChannels:
        """The execution's channels, written in this worker's name."""
        return self.runtime.channels(job.id, job, worker=self.worker.name)

    def write_lost(self, channels: ExecutionChannels, execution_id: str, message: str) -> bool:
        """Close the execution's log (continuing its seq) and write a ``lost``/``worker_lost`` outcome."""
        resume = LogResume.read(self.connection, self.keys.log_stream(execution_id), self.keys.log_compact(execution_id))
        channels.resume_logs(resume.entries, ended=resume.ended)
        channels.send_eof()
        return channels.finish(Outcome.failure(execution_id, ExecutionStatus.LOST, "worker_lost", message))

    @property
    def longest_stop_grace(self) -> float:
        """Seconds the longest stop of a container may take here: the worker's stop grace, or the
        longest ``stop_timeout`` its policy allows (``UNBOUNDED_STOP_GRACE_SECONDS`` if unbounded)."""
        bound = self.settings.policy.max_stop_timeout_seconds
        return max(self.settings.stop_grace_seconds, UNBOUNDED_STOP_GRACE_SECONDS if bound is None else bound)

    def remove(
        self, docker: DockerExecutor | None, containers: list[OwnedContainer], report: ReapReport,
        grace: float | None = None,
    ) -> None:
        """Remove ``containers``; with ``grace``, running ones are first stopped with their own
        stop timeout (the request's ``stop_timeout``, at most ``longest_stop_grace``), else ``grace``."""
        if docker is None:
            return
        for c in containers:
            try:
                docker.remove_container(c, grace, max_grace=self.longest_stop_grace)
                report.removed_containers.append(c.short_id)
            except DAEMON_ERRORS as exc:
                log.warning("reaper: removing container %s failed: %s", c.short_id, exc)

    def publish(self, execution_id: str, state: ExecutionState) -> None:
        event = Event(execution_id=execution_id, status=state, worker=self.worker.name)
        self.connection.publish(self.keys.events, event.model_dump_json())

    def running_here(self) -> set[str]:
        """Executions this process runs or follows (never orphans, whatever Redis says)."""
        try:
            executions = set(getattr(self.runtime.executor, "executions", lambda: ())())
        except DockerUnavailableError:
            executions = set()
        return executions | self.adoptions.active()


def is_execution(job: Job) -> bool:
    """Whether the rq job is a dockrq execution (``worker.jobs.execute``)."""
    try:
        return job.func_name == JOB_FUNCTION
    except DeserializationError:
        return False

