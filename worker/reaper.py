"""The reaper: every worker finishes what dead workers left behind.

Each dockrq worker runs one reaper thread (every ``reap_interval_seconds``, and
once at start-up, before rq's own registry maintenance). A pass looks at:

1. **rq's StartedJobRegistry** of the worker's queues. An entry whose owner (rq's
   execution record, else the job's ``worker_name``) is dead by
   :mod:`worker.liveness` is taken under the execution's reap lock
   (``SET P:exec:ID:reaping NX PX``), then:

   - its outcome exists (the owner died after writing it): the rq job is
     settled as finished and any container left on this daemon removed;
   - a container of the execution with *this worker's executor id* is on this
     daemon: the execution is **adopted** (worker.adoption) and followed to its end;
   - otherwise every container of the execution on this daemon is stopped and
     removed, and the execution is re-enqueued at the front of its queue if
     its request allows ``retries`` (attempts are counted in the job's meta),
     or gets a ``lost`` outcome (code ``worker_lost``) and the rq job fails.

2. **rq's intermediate queue**: a job a worker took off the queue but died
   before starting (not in the started registry, still ``queued``) for
   ``reap_after_seconds`` is put back on the queue.

3. **rq's FailedJobRegistry**: a dockrq job that rq failed without an outcome
   (its own abandoned-job or stuck-job cleanup got there first) gets a ``lost``
   outcome, so no waiter hangs.

4. **Orphan containers on this daemon**: containers with a ``dockrq.execution``
   label older than ``orphan_grace_seconds`` that nobody owns are removed.
   Owned means: the execution's rq job (from this worker's queues) is started
   by a live worker whose executor id is the container's (several workers,
   and nodes, may share one daemon; ownership goes execution id -> rq job ->
   worker liveness). Containers of executions whose outcome exists, whose job
   is back on the queue or has ended are removed; containers unknown to this
   deployment's Redis are removed when labelled with this deployment's id
   (``dockrq.deployment``, worker.deployment: Redis lost or expired their
   data) and left alone otherwise (another deployment, a standalone executor).

Outcomes are written with the first-writer-wins script, so an adopter, a
reaper and a late worker can never give one execution two outcomes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import as_text, parse_composite_key

from schemas import JOB_FUNCTION, Event, ExecutionState, ExecutionStatus, Outcome
from worker.executor import DockerUnavailableError
from worker.executor.client import DAEMON_ERRORS
from worker.executor.types import LABEL_CREATED, LABEL_EXECUTION, LABEL_EXECUTOR

from . import settle
from .adoption import Adoptions, LogResume
from .channels import ExecutionChannels
from .deployment import FORGOTTEN, LABEL_DEPLOYMENT, forgotten
from .liveness import Liveness, WorkerState, rq_heartbeat_ttl

if TYPE_CHECKING:
    from rq.queue import Queue
    from rq.worker import BaseWorker

    from worker.executor.client import DockerClient

    from .runtime import WorkerRuntime

log = logging.getLogger(__name__)

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LIVE_CONTAINER_STATES = {"created", "running", "paused", "restarting", "exited"}
_QUEUED_STATES = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.DEFERRED.value}
_ENDED_STATES = {
    JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value
}
_FAILED_CHECKED_MAX = 100_000


@dataclass
class ReapReport:
    """What one pass did (execution ids), for logs and tests."""

    adopted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    unstuck: list[str] = field(default_factory=list)
    removed_containers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


class Reaper:
    def __init__(self, worker: BaseWorker, runtime: WorkerRuntime) -> None:
        s = runtime.settings
        self.worker = worker
        self.runtime = runtime
        self.settings = s
        self.connection: redis.Redis = worker.connection
        self.keys = runtime.keys
        self.rq_ttl = rq_heartbeat_ttl(s)
        self.liveness = Liveness(self.connection, reap_after=s.reap_after_seconds, worker_name=worker.name)
        self.adoptions = Adoptions(worker, runtime, self.rq_ttl)
        self._release = self.connection.register_script(_RELEASE_LUA)
        self._stuck_seen: dict[str, float] = {}
        self._failed_checked: dict[str, None] = {}
        self._pass_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected_since: float | None = None
        self._failing = False

    # -- the thread --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dockrq-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.settings.reap_interval_seconds)

    def run_once(self) -> ReapReport | None:
        """One pass; None when another pass of this process is running or Redis is unreachable."""
        if not self._pass_lock.acquire(blocking=False):
            return None
        try:
            report = self._pass()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._connected_since = None
            if not self._failing:
                log.warning("reaper: Redis unreachable (%s); retrying every %gs", exc, self.settings.reap_interval_seconds)
            self._failing = True
            return None
        except DAEMON_ERRORS as exc:  # the daemon went away mid-pass
            log.warning("reaper: Docker daemon unreachable (%s); next pass", exc)
            return None
        except Exception:  # noqa: BLE001 - one bad pass must not end the thread
            log.exception("reaper: pass failed")
            return None
        finally:
            self._pass_lock.release()
        self._failing = False
        if report:
            log.info("reaper: %s", report)
        return report

    # -- one pass -------------------------------------------------------------------

    def _pass(self) -> ReapReport:
        report = ReapReport()
        now, uptime = self._clock()
        docker = self._docker()
        for queue in self.worker.queues:
            self._reap_started(queue, now, uptime, docker, report)
            self._requeue_stuck(queue, report)
            self._settle_failed_without_outcome(queue, report)
        if docker is not None:
            self._sweep(docker, now, uptime, report)
        return report

    def _clock(self) -> tuple[float, float]:
        """Redis's time and how long Redis has been up (see worker.liveness)."""
        if self._connected_since is None:
            self._connected_since = time.monotonic()
        try:
            return self.liveness.clock()
        except redis.ResponseError:  # INFO not allowed for this ACL user: count our own connected time
            seconds, micros = self.connection.time()
            return seconds + micros / 1e6, time.monotonic() - self._connected_since

    def _docker(self) -> DockerClient | None:
        try:
            client = getattr(self.runtime.executor, "client", None)
        except DockerUnavailableError:
            return None
        return client if client is not None and client.ping() else None

    # -- 1. started jobs of dead workers ---------------------------------------------

    def _reap_started(self, queue: Queue, now: float, uptime: float, docker: Any, report: ReapReport) -> None:
        entries = [parse_composite_key(as_text(e)) for e in self.connection.zrange(queue.started_job_registry.key, 0, -1)]
        if not entries:
            return
        adopted = self.adoptions.active()
        entries = [(j, x) for j, x in entries if j not in adopted]
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id, execution_id in entries:
                pipe.hget(Execution(execution_id, job_id, self.connection).key, "worker_name")
                pipe.hget(Job.key_for(job_id), "worker_name")
            replies = pipe.execute()
        owners = [as_text(a or b or b"") for a, b in zip(replies[0::2], replies[1::2], strict=True)]
        states = self.liveness.states(owners)
        for (job_id, execution_id), owner in zip(entries, owners, strict=True):
            state = states.get(owner)
            # Only a would-be adopter (same executor id) may judge by PID at once.
            adopter = state is not None and state.executor_id == self.settings.executor_id
            if state is None or not self.liveness.is_dead(state, now, uptime, by_pid=adopter):
                continue
            self._reap(queue, job_id, execution_id, state, docker, report)

    def _reap(self, queue: Queue, job_id: str, execution_id: str, owner: WorkerState, docker: Any, report: ReapReport) -> None:
        with self._locked(job_id) as got:
            if not got:
                return
            job = settle.fetch_job(self.connection, job_id)
            execution = settle.rq_execution(self.connection, job_id, execution_id, owner.name)
            if not settle.started_entry_exists(self.connection, queue, execution):
                return  # settled meanwhile
            if job is None:
                self.connection.zrem(queue.started_job_registry.key, execution.composite_key)
                return
            if execution.worker_name != owner.name or not _is_execution(job):
                return  # re-pointed by an adopter meanwhile / not a dockrq job: rq's business
            channels = self._channels(job)
            outcome, _ = channels.ended_or_cancelled()
            if docker is None and outcome is None:
                return  # cannot tell whether its container runs here: next pass
            try:
                containers = self._containers_of(docker, job_id) if docker is not None else []
            except DAEMON_ERRORS as exc:
                if outcome is None:
                    log.warning("reaper: cannot list %s's containers (%s); next pass", job_id, exc)
                    return
                docker, containers = None, []
            if outcome is not None:
                self._remove(docker, containers, report)
                settle.finish(self.worker, job, queue, execution, _summary(outcome))
                report.settled.append(job_id)
                log.warning("execution %s: worker %s died after its outcome; rq job settled", job_id, owner.name)
                return
            mine = [
                c for c in containers
                if (c.get("Labels") or {}).get(LABEL_EXECUTOR) == self.settings.executor_id
                and c.get("State") in _LIVE_CONTAINER_STATES
            ]
            if mine:
                if getattr(self.worker, "_stop_requested", False):
                    return  # shutting down: leave it to the next worker of this node (or a reaper)
                self.adoptions.adopt(job, queue, execution, mine[0])
                report.adopted.append(job_id)
                return
            self._remove(docker, containers, report, grace=self.settings.stop_grace_seconds)
            attempts = _int(job.meta.get("attempts"), 1)
            retries = _retries(job)
            if attempts <= retries:
                settle.requeue(
                    self.connection, job, queue, execution,
                    {"attempts": attempts + 1, "status": ExecutionState.QUEUED.value, "lost_worker": owner.name},
                )
                self._publish(job_id, ExecutionState.QUEUED)
                report.requeued.append(job_id)
                log.warning(
                    "execution %s: worker %s lost; re-enqueued (attempt %d of %d)", job_id, owner.name, attempts + 1, retries + 1
                )
                return
            where = f"its container was removed from {self.settings.executor_id}'s daemon" if containers else "no container of it on this daemon"
            message = (
                f"worker {owner.name} died while running the execution (no heartbeat for "
                f"{self.settings.reap_after_seconds:g}s); {where}"
            )
            self._write_lost(channels, job_id, message)
            settle.fail(self.worker, job, queue, execution, f"dockrq: {message}")
            report.lost.append(job_id)
            log.warning("execution %s: lost (%s)", job_id, message)

    # -- 2. jobs dequeued by a worker that died before starting them -------------------

    def _requeue_stuck(self, queue: Queue, report: ReapReport) -> None:
        waiting = [as_text(i) for i in self.connection.lrange(queue.intermediate_queue_key, 0, -1)]
        seen_now = time.monotonic()
        for job_id in list(self._stuck_seen):
            if job_id not in waiting:
                del self._stuck_seen[job_id]
        if not waiting:
            return
        started = {parse_composite_key(as_text(e))[0] for e in self.connection.zrange(queue.started_job_registry.key, 0, -1)}
        for job_id in waiting:
            if job_id in started:
                continue
            first = self._stuck_seen.setdefault(job_id, seen_now)
            if seen_now - first < self.settings.reap_after_seconds:
                continue
            with self._locked(job_id) as got:
                if not got:
                    continue
                job = settle.fetch_job(self.connection, job_id)
                if job is None or job.get_status(refresh=False) != JobStatus.QUEUED or not _is_execution(job):
                    continue  # finished jobs linger there with several queues: rq cleans those
                with self.connection.pipeline() as pipe:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                    queue._enqueue_job(job, pipeline=pipe, at_front=True)
                    pipe.execute()
                self._stuck_seen.pop(job_id, None)
                report.unstuck.append(job_id)
                log.warning("execution %s: taken off the queue by a worker that died before starting it; re-enqueued", job_id)

    # -- 3. jobs rq failed without an outcome ----------------------------------------------

    def _settle_failed_without_outcome(self, queue: Queue, report: ReapReport) -> None:
        ids = [as_text(i) for i in self.connection.zrange(queue.failed_job_registry.key, 0, -1)]
        fresh = [i for i in ids if i not in self._failed_checked]
        if not fresh:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in fresh:
                pipe.exists(self.keys.outcome(job_id))
            has_outcome = pipe.execute()
        for job_id, has in zip(fresh, has_outcome, strict=True):
            if not has:
                job = settle.fetch_job(self.connection, job_id)
                if job is not None and _is_execution(job) and job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED):
                    message = "rq gave up on the job (its worker died or it was stuck) and no outcome was written"
                    if self._write_lost(self._channels(job), job_id, message):
                        report.lost.append(job_id)
                        log.warning("execution %s: lost (%s)", job_id, message)
            self._failed_checked[job_id] = None
        while len(self._failed_checked) > _FAILED_CHECKED_MAX:
            self._failed_checked.pop(next(iter(self._failed_checked)))

    # -- 4. orphan containers on this daemon -----------------------------------------------

    def _sweep(self, docker: DockerClient, now: float, uptime: float, report: ReapReport) -> None:
        try:
            containers = docker.api.containers(all=True, filters={"label": [LABEL_EXECUTION]})
        except DAEMON_ERRORS as exc:
            log.debug("reaper: listing containers failed: %s", exc)
            return
        here = self._running_here()
        wall = time.time()
        old = []
        for c in containers:
            labels = c.get("Labels") or {}
            execution_id = labels.get(LABEL_EXECUTION, "")
            if not execution_id or (execution_id in here and labels.get(LABEL_EXECUTOR) == self.settings.executor_id):
                continue
            if wall - _created(c) < self.settings.orphan_grace_seconds:
                continue
            old.append(c)
        if not old:
            return
        ids = [(c.get("Labels") or {})[LABEL_EXECUTION] for c in old]
        with self.connection.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.exists(self.keys.outcome(execution_id))
                pipe.hmget(Job.key_for(execution_id), ["status", "origin", "worker_name"])
            replies = pipe.execute()
        facts = list(zip(replies[0::2], replies[1::2], strict=True))
        states = self.liveness.states([as_text(f[1][2] or b"") for f in facts])
        queues = set(self.worker.queue_names())
        for c, execution_id, (has_outcome, (status, origin, owner)) in zip(old, ids, facts, strict=True):
            status, origin, owner = as_text(status or b""), as_text(origin or b""), as_text(owner or b"")
            executor = (c.get("Labels") or {}).get(LABEL_EXECUTOR)
            if has_outcome:
                self._sweep_one(docker, c, execution_id, "its execution has an outcome", report)
            elif not status and (c.get("Labels") or {}).get(LABEL_DEPLOYMENT) == self.settings.deployment_id:
                # Ours, and Redis knows nothing of it (lost its data, or the keys expired).
                self._sweep_one(docker, c, execution_id, FORGOTTEN, report, recheck=lambda: forgotten(self.connection, self.keys, execution_id))
            elif not status or origin not in queues:
                continue  # not this deployment's: another prefix or queue set, a standalone executor
            elif status == JobStatus.STARTED.value:
                state = states.get(owner)
                if state is None or self.liveness.is_dead(state, now, uptime, by_pid=False):
                    continue  # the started-jobs pass adopts or reaps it
                if state.executor_id and executor and state.executor_id != executor:
                    self._sweep_one(docker, c, execution_id, f"its execution now runs on {state.executor_id}", report)
            elif status in _QUEUED_STATES:
                self._sweep_one(docker, c, execution_id, "its execution is back on the queue", report, recheck=True)
            elif status in _ENDED_STATES:
                job = settle.fetch_job(self.connection, execution_id)
                if job is not None and _is_execution(job):
                    self._write_lost(self._channels(job), execution_id, f"the rq job {status} without an outcome")
                self._sweep_one(docker, c, execution_id, f"its rq job is {status}", report)

    def _sweep_one(
        self, docker: DockerClient, container: dict[str, Any], execution_id: str, why: str, report: ReapReport,
        *, recheck: bool | Callable[[], bool] = False,
    ) -> None:
        with self._locked(execution_id) as got:
            if not got:
                return
            if callable(recheck):
                if not recheck():
                    return
            elif recheck:  # a worker may have taken the job meanwhile (it would adopt this container)
                status = as_text(self.connection.hget(Job.key_for(execution_id), "status") or b"")
                if status not in _QUEUED_STATES:
                    return
            log.warning("reaper: removing orphan container %s of %s: %s", container["Id"][:12], execution_id, why)
            self._remove(docker, [container], report)

    # -- helpers ---------------------------------------------------------------------------

    def _running_here(self) -> set[str]:
        try:
            executions = set(getattr(self.runtime.executor, "executions", lambda: ())())
        except DockerUnavailableError:
            executions = set()
        return executions | self.adoptions.active()

    def _containers_of(self, docker: DockerClient, execution_id: str) -> list[dict[str, Any]]:
        return docker.labelled_containers({LABEL_EXECUTION: execution_id})

    def _remove(self, docker: DockerClient | None, containers: list[dict[str, Any]], report: ReapReport, grace: float = 0) -> None:
        if docker is None:
            return
        for c in containers:
            try:
                if grace and c.get("State") == "running":
                    docker.stop(c["Id"], grace)
                docker.remove(c["Id"])
                report.removed_containers.append(c["Id"][:12])
            except DAEMON_ERRORS as exc:
                log.warning("reaper: removing container %s failed: %s", c["Id"][:12], exc)

    def _channels(self, job: Job) -> ExecutionChannels:
        s = self.settings
        return ExecutionChannels(
            self.connection, self.keys, job.id, worker=self.worker.name,
            retention_seconds=s.retention_seconds, log_stream_maxlen=s.log_stream_maxlen, job=job,
            outcome_retry_seconds=s.outcome_retry_seconds,
            acks=self.runtime.acks,
        )

    def _write_lost(self, channels: ExecutionChannels, execution_id: str, message: str) -> bool:
        channels.resume_logs(LogResume.read(self.connection, self.keys.log_stream(execution_id)).entries)
        channels.send_eof()
        return channels.finish(Outcome.failure(execution_id, ExecutionStatus.LOST, "worker_lost", message))

    def _publish(self, execution_id: str, state: ExecutionState) -> None:
        event = Event(execution_id=execution_id, status=state, worker=self.worker.name)
        self.connection.publish(self.keys.events, event.model_dump_json())

    @contextmanager
    def _locked(self, execution_id: str) -> Iterator[bool]:
        key, token = self.keys.reap_lock(execution_id), uuid.uuid4().hex
        ttl_ms = int((self.settings.stop_grace_seconds + 60) * 1000)
        got = bool(self.connection.set(key, token, nx=True, px=ttl_ms))
        try:
            yield got
        finally:
            if got:
                self._release(keys=[key], args=[token])


def _is_execution(job: Job) -> bool:
    try:
        return job.func_name == JOB_FUNCTION
    except DeserializationError:
        return False


def _retries(job: Job) -> int:
    try:
        request = job.args[0] if job.args else None
    except DeserializationError:
        return 0
    return _int(request.get("retries") if isinstance(request, dict) else None, 0)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _summary(outcome: Outcome) -> dict[str, Any]:
    return {"execution_id": outcome.execution_id, "status": outcome.status.value, "exit_code": outcome.exit_code}


def _created(container: dict[str, Any]) -> float:
    labels = container.get("Labels") or {}
    try:
        return float(labels.get(LABEL_CREATED) or container.get("Created") or 0)
    except ValueError:
        return float(container.get("Created") or 0)
