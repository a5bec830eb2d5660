"""How a dockrq worker outlives faults: Redis restarts, dockerd restarts, dead siblings.

``ResilientWorker`` is mixed into :class:`worker.rq_worker.DockrqWorker`:

- **Heartbeats from a thread**, every ``heartbeat_seconds``, busy or idle: the
  rq worker hash, the current job's started entry, and those of adopted
  executions. A worker is judged dead only when its process is (see
  worker.liveness), never because its main thread was busy stopping a
  container or writing an outcome. rq's own started-entry TTL stays long
  (``get_heartbeat_ttl``): the reaper, not rq's abandoned-job cleanup, ends
  a dead worker's job, within ``reap_after_seconds``.
- **The reaper** (worker.reaper) runs in its own thread and once before rq's
  registry maintenance, so a dead worker's job is adopted or reaped by dockrq
  before rq would fail it without an outcome.
- **Redis outages**: rq's loop only survives connection errors while waiting
  on the queue; anywhere else (suspension check, maintenance, state and
  heartbeat writes, job bookkeeping) it quits the worker. Here those calls
  wait out the outage instead, and a job whose rq bookkeeping was cut by the
  outage is settled once Redis is back (finished if its outcome is written,
  back on the queue if it never ran).
- **Docker outages**: no job is taken off the queue while the daemon does not
  answer; the worker waits for it (heartbeating) and serves again once it is back.
- **Shutdown signals**: rq's SIGTERM handler raises ``StopRequested`` wherever
  the idle main thread happens to be. Inside code that catches ``Exception``
  (the reaper's pass, a Docker ping) it would be swallowed, the worker would go
  back to the queue deaf to it, and the second SIGTERM would find teardown
  waiting on adopted executions with nothing left to stop them. Those sections
  hold the request and raise it as they end; a cold shutdown is remembered, so
  teardown stops adopted executions whenever the second signal came.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from rq.exceptions import StopRequested
from rq.job import JobStatus
from rq.utils import as_text, now, parse_composite_key
from rq.worker.base import WorkerStatus

from schemas import ExecutionStatus, Outcome

from . import runtime as runtime_module
from . import settle
from .liveness import identity, rq_heartbeat_ttl
from .reaper import Reaper

if TYPE_CHECKING:
    from rq.job import Job
    from rq.queue import Queue

log = logging.getLogger(__name__)

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.25)
# Before taking a job the daemon must answer; an answer this recent counts (see _wait_for_docker).
DOCKER_FRESH_SECONDS = 1.0


class Heartbeat(threading.Thread):
    """Keeps the worker (and what it runs) visibly alive while the process lives."""

    def __init__(self, worker: Any, reaper: Reaper, interval: float) -> None:
        super().__init__(name="dockrq-heartbeat", daemon=True)
        self.worker = worker
        self.reaper = reaper
        self.interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        failing = False
        while not self._halt.wait(self.interval):
            try:
                if self.worker.executions:
                    self.worker.heartbeat_current_job()
                else:
                    self.worker.heartbeat(raise_errors=True)
                self.reaper.adoptions.keep_alive()
                failing = False
            except _REDIS_DOWN as exc:
                if not failing:
                    log.warning("heartbeat: Redis unreachable (%s); still trying", exc)
                failing = True
            except Exception:  # noqa: BLE001 - the heartbeat must keep going
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class ResilientWorker:
    """Mixin for an rq BaseWorker subclass (before it in the bases)."""

    _reaper: Reaper | None = None
    _beats: Heartbeat | None = None
    _performed_job_id: str | None = None
    _shielded = 0  # depth of main-thread sections a stop request must not interrupt
    _stop_held = False  # a stop request arrived in one of them
    cold_shutdown = False  # the second SIGTERM came

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = runtime_module.current().settings
        # rq's worker-hash TTL while busy is job_monitoring_interval + 60.
        kwargs.setdefault("job_monitoring_interval", max(1, int(settings.heartbeat_seconds)))
        super().__init__(*args, **kwargs)

    @property
    def reaper(self) -> Reaper | None:
        return self._reaper

    # -- identity and liveness -----------------------------------------------------

    def serialize(self) -> dict:
        data = super().serialize()
        data.update(identity(runtime_module.current().settings.executor_id))
        return data

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return rq_heartbeat_ttl(runtime_module.current().settings)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        runtime = runtime_module.current()
        self._reaper = Reaper(self, runtime)
        self._beats = Heartbeat(self, self._reaper, runtime.settings.heartbeat_seconds)
        self._beats.start()
        self._reaper.start()  # its first pass runs now: a restarted worker adopts at once

    def teardown(self) -> None:
        interrupted: BaseException | None = None
        if self._reaper is not None:
            self._reaper.stop()
            adoptions = self._reaper.adoptions
            try:
                if adoptions.active() and not self.cold_shutdown:
                    self.log.info("Worker %s: waiting for %d adopted execution(s)", self.name, len(adoptions.active()))
                    adoptions.wait()
            except BaseException as exc:  # second SIGTERM: stop them, write their outcomes
                interrupted = exc
            if adoptions.active():
                adoptions.shut_down(runtime_module.current().settings.stop_grace_seconds + 30)
        if self._beats is not None:
            self._beats.stop()
        try:
            super().teardown()
        except _REDIS_DOWN as exc:
            self.log.warning("Worker %s: could not register its death (%s); its heartbeat will age out", self.name, exc)
        if interrupted is not None:
            raise interrupted

    # -- shutdown signals --------------------------------------------------------------

    @contextmanager
    def _holding_stop(self) -> Iterator[None]:
        """A section of the idle main thread that catches broad exceptions: a stop request
        arriving in it is raised when it ends, not inside it (see the module docstring)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
        if not self._shielded and self._stop_held:
            self._stop_held = False
            raise StopRequested()

    def _shutdown(self) -> None:
        """rq's first-signal handling, but held while in a ``_holding_stop`` section."""
        if self._shielded and self.get_state() != WorkerStatus.BUSY:
            self._stop_held = True
            return
        super()._shutdown()

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Remember the cold shutdown for teardown, unless rq ignores the signal (a duplicate
        within a second, as a pool and the terminal both send on Ctrl-C)."""
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            self.cold_shutdown = True
            raise

    def clean_registries(self) -> None:
        if self._reaper is not None:
            self._reaper.run_once()  # before rq can call a dead worker's job abandoned
        super().clean_registries()

    # -- Redis outages ---------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None, raise_errors: bool = False) -> None:
        if pipeline is not None or raise_errors:
            return super().heartbeat(timeout, pipeline=pipeline)
        try:
            super().heartbeat(timeout)
        except _REDIS_DOWN as exc:
            self.log.debug("Worker %s: heartbeat failed: %s", self.name, exc)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            return super().set_state(state, pipeline=pipeline)
        try:
            super().set_state(state)
        except _REDIS_DOWN as exc:
            self._state = state
            self.log.debug("Worker %s: state %s not saved: %s", self.name, state, exc)

    def check_for_suspension(self, burst: bool) -> None:
        failures = 0
        while True:
            try:
                return super().check_for_suspension(burst)
            except _REDIS_DOWN as exc:
                failures += 1
                pause = _BACKOFF.compute(failures)
                self.log.error("Worker %s: Redis unreachable (%s); retrying in %.1fs", self.name, exc, pause)
                time.sleep(pause)

    def run_maintenance_tasks(self) -> None:
        try:
            with self._holding_stop():
                super().run_maintenance_tasks()
        except _REDIS_DOWN as exc:
            self.last_cleaned_at = now()
            self.log.warning("Worker %s: maintenance skipped, Redis unreachable: %s", self.name, exc)

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "", execution: Any = None
    ) -> None:
        """A job failed by a Redis outage may have left its outcome with the runtime; it goes out
        first, or the reaper would later call the execution lost (also for adopted executions)."""
        runtime_module.current().write_unwritten(job)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """rq's success bookkeeping, retried once Redis is back (rq would otherwise fail a job
        whose outcome says it succeeded, or leave it started)."""
        failures = 0
        while True:
            try:
                return super().handle_job_success(job, queue, started_job_registry, execution)
            except _REDIS_DOWN as exc:
                failures += 1
                self.log.warning("Worker %s: recording job %s as finished failed (%s); retrying", self.name, job.id, exc)
                if failures > 1:
                    time.sleep(_BACKOFF.compute(failures))
                self._wait_for_redis()

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        self._performed_job_id = job.id
        return super().perform_job(job, queue, execution)

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._performed_job_id = None
        try:
            super().execute_job(job, queue)
        except _REDIS_DOWN as exc:
            self.log.error("Worker %s: Redis failed around job %s (%s); settling it once Redis is back", self.name, job.id, exc)
            self._wait_for_redis()
            self._settle_after_outage(job, queue)

    def _wait_for_redis(self) -> None:
        failures = 0
        while True:
            try:
                self.connection.ping()
                return
            except _REDIS_DOWN:
                failures += 1
                time.sleep(_BACKOFF.compute(failures))

    def _settle_after_outage(self, job: Job, queue: Queue) -> None:
        """The job's rq bookkeeping was cut short by a Redis outage: finish it from its outcome."""
        conn = self.connection
        keys = runtime_module.current().keys
        entries = [parse_composite_key(as_text(e)) for e in conn.zrange(queue.started_job_registry.key, 0, -1)]
        executions = [
            e for e in list(self.executions.values()) if e.job_id == job.id
        ] or [settle.rq_execution(conn, j, x, self.name) for j, x in entries if j == job.id]
        execution = executions[0] if executions else None
        runtime_module.current().write_unwritten(job)  # it ended while Redis was away past its budget
        raw = conn.lindex(keys.outcome(job.id), 0)
        status = job.get_status(refresh=True)
        if raw is not None:
            outcome = Outcome.model_validate_json(raw)
            if status == JobStatus.STARTED and execution is not None:
                summary = {"execution_id": job.id, "status": outcome.status.value, "exit_code": outcome.exit_code}
                settle.finish(self, job, queue, execution, summary)
        elif self._performed_job_id != job.id and status in (JobStatus.STARTED, JobStatus.QUEUED):
            with conn.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.execute()
            settle.requeue(conn, job, queue, execution, {})
            self.log.warning("Worker %s: job %s never ran; put back on its queue", self.name, job.id)
        elif status == JobStatus.STARTED and execution is not None:
            # It ran, but nothing of its outcome is known here (the job died with it).
            channels = runtime_module.current().channels(job.id, job)
            if channels.finish(
                Outcome.failure(job.id, ExecutionStatus.ERROR, "redis_unavailable", "Redis was unreachable for too long")
            ):
                self.log.error("Worker %s: execution %s ended error/redis_unavailable", self.name, job.id)
            settle.fail(self, job, queue, execution, "dockrq: Redis was unreachable while the job ended")
        for e in executions:
            self.executions.pop(e.id, None)
        self.set_state("idle")

    # -- Docker outages ---------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        self._wait_for_docker()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _wait_for_docker(self) -> None:
        with self._holding_stop():
            try:
                executor = runtime_module.current().executor
            except Exception:  # noqa: BLE001 - no client at all: the job will say so
                return
        # The daemon answered a moment ago (the last job's remove, usually): that is the
        # ping's answer already, and saves a daemon round trip per job.
        answered_within = getattr(executor, "answered_within", None)
        if answered_within is not None and answered_within(DOCKER_FRESH_SECONDS):
            return
        is_installed = getattr(executor, "is_installed", None)
        if is_installed is None:
            return

        def answers() -> bool:
            with self._holding_stop():  # is_installed() never raises: it would swallow a stop
                return is_installed()

        if answers():
            return
        self.log.warning("Worker %s: the Docker daemon does not answer; taking no job until it does", self.name)
        failures = 0
        while not answers():
            failures += 1
            time.sleep(_BACKOFF.compute(failures))
            self.heartbeat()
        self.log.info("Worker %s: the Docker daemon is back", self.name)
