"""The rq worker class that runs dockrq executions: ``DockrqWorker``.

A non-forking ``SimpleWorker``: containers already isolate the work, so a
work horse per job would only add a fork and a fresh Docker client to every
execution. What forking workers get from their monitoring parent -- heartbeats
while the job runs, ``stop-job`` killing the horse -- is provided here through
the runtime instead; rq's signal handling (SIGTERM: finish the current job;
second SIGTERM: ``SystemExit`` in the job) is kept as is and the job function
turns it into a stopped container and a written outcome.

How it outlives faults (the units live in ``worker.faults``):

- **Heartbeats from a thread** (``worker.service.heartbeat``), busy or idle.
  rq's own started-entry TTL stays long (``get_heartbeat_ttl``): the reaper, not
  rq's abandoned-job cleanup, ends a dead worker's job, within ``reap_after_seconds``.
- **The reaper** (``worker.faults.reaper``) runs in its own thread and once before
  rq's registry maintenance, so a dead worker's job is adopted or reaped by dockrq
  before rq would fail it without an outcome.
- **Redis outages**: the calls rq's loop makes outside its queue wait (suspension
  check, maintenance, state and heartbeat writes, job bookkeeping) ride the outage
  out instead of quitting the worker, and a job whose bookkeeping was cut short is
  settled once Redis is back (``worker.faults.outage``).
- **Docker outages**: no job is taken off the queue while the daemon does not answer.
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
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rq.exceptions import StopRequested
from rq.job_lifecycle import call_exception_handlers
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker
from rq.worker.base import WorkerStatus

from schemas.connections import REDIS_DOWN, ride_out_outage
from worker.executor import ExecutionOwnedElsewhere
from worker.faults import contested
from worker.faults.liveness import identity, rq_heartbeat_ttl
from worker.faults.owner import owner_labels
from worker.faults.outage import settle_after_outage, wait_for_docker
from worker.faults.reaper import Reaper
from worker.observe import logformat, metrics
from worker.service import runtime as runtime_module
from worker.service.bookkeeping import FewerCommands
from worker.service.heartbeat import Heartbeat
from worker.service.job import DockrqJob, RefusedJob, as_dockrq_job, dockrq_job_class
from worker.service.registration import Registration

if TYPE_CHECKING:
    from rq.job import Job
    from rq.queue import Queue


class _NoJobArguments(logging.Filter):
    """rq attaches a failed job's arguments to its error record (``extra``); a
    structured log handler would print them, and they hold environment values."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("arguments", "kwargs"):
            if hasattr(record, name):
                setattr(record, name, "<hidden>")
        return True


_no_job_arguments = _NoJobArguments()


class DockrqWorker(FewerCommands, SimpleWorker):
    """SimpleWorker (with fewer bookkeeping commands, ``worker.service.bookkeeping``) + the dockrq runtime, the heartbeat thread, the reaper (adoption of a dead
    predecessor's containers included) and outage handling; JSON serializer unless told otherwise."""

    job_class = DockrqJob  # runs worker.jobs.execute(request) and nothing else (whatever job_class is passed)

    _reaper: Reaper | None = None
    _beats: Heartbeat | None = None
    registration: Registration | None = None  # registers the worker again after Redis lost its data
    _performed_job_id: str | None = None
    _shielded = 0  # depth of main-thread sections a stop request must not interrupt
    _stop_held = False  # a stop request arrived in one of them
    cold_shutdown = False  # the second SIGTERM came

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("serializer") is None:
            kwargs["serializer"] = JSONSerializer
        kwargs["job_class"] = dockrq_job_class(kwargs.get("job_class"))
        settings = runtime_module.current().settings
        # rq's worker-hash TTL while busy is job_monitoring_interval + 60.
        kwargs.setdefault("job_monitoring_interval", max(1, int(settings.heartbeat_seconds)))
        super().__init__(*args, **kwargs)
        # rq logs job descriptions at INFO; a description made by something other
        # than the dockrq producer is the call string, with environment values in it.
        self.log_job_description = False
        self.log.addFilter(_no_job_arguments)  # idempotent: one filter object

    @property
    def reaper(self) -> Reaper | None:
        return self._reaper

    # -- life cycle ------------------------------------------------------------------

    def serialize(self) -> dict:
        data = super().serialize()
        data.update(identity(runtime_module.current().settings.executor_id))
        return data

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return rq_heartbeat_ttl(runtime_module.current().settings)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        runtime = runtime_module.current()
        runtime.executor  # noqa: B018 - fail before registering if Docker is unreachable
        runtime.worker = self
        if isinstance(getattr(runtime.executor, "labels", None), dict):  # dockrq.worker on its containers
            runtime.executor.labels.update(owner_labels(self.name))
            # a container of this execution owned by another live worker is left to it (worker.faults.contested)
            runtime.executor.owner_alive = contested.owner_check(
                self.connection, reap_after=runtime.settings.reap_after_seconds, worker_name=self.name
            )
        super().bootstrap(*args, **kwargs)
        self.registration = Registration(self, max(runtime.settings.heartbeat_seconds, runtime.settings.idle_heartbeat_seconds))
        self._reaper = Reaper(self, runtime)
        self._beats = Heartbeat(
            self, self._reaper.adoptions, runtime.settings.heartbeat_seconds, runtime.settings.idle_heartbeat_seconds
        )
        self._beats.start()
        self._reaper.start()  # its first pass runs now: a restarted worker adopts at once

    def teardown(self) -> None:
        runtime = runtime_module.current()
        try:
            if self.registration is not None:  # stopping: rq's register_death has the last word
                self.registration.close()
            interrupted = self._finish_adopted()
            if self._beats is not None:
                self._beats.stop()
            try:
                super().teardown()
            except REDIS_DOWN as exc:
                self.log.warning("Worker %s: could not register its death (%s); its heartbeat will age out", self.name, exc)
            if interrupted is not None:
                raise interrupted
        finally:
            if runtime.worker is self:
                runtime.worker = None
                runtime.close()

    def _finish_adopted(self) -> BaseException | None:
        """Stop the reaper; let adopted executions end (warm shutdown) or stop them (cold).
        Returns the second SIGTERM's exception if it came meanwhile, to raise after teardown."""
        if self._reaper is None:
            return None
        interrupted: BaseException | None = None
        self._reaper.stop()
        adoptions = self._reaper.adoptions
        try:
            if adoptions.active() and not self.cold_shutdown:
                self.log.info("Worker %s: waiting for %d adopted execution(s)", self.name, len(adoptions.active()))
                adoptions.wait()
        except BaseException as exc:  # second SIGTERM: stop them, write their outcomes
            interrupted = exc
        if adoptions.active():
            adoptions.shut_down(30)  # beyond each adopted execution's own stop grace
        return interrupted

    def clean_registries(self) -> None:
        if self._reaper is not None:
            self._reaper.run_once()  # before rq can call a dead worker's job abandoned
        super().clean_registries()

    # -- heartbeats --------------------------------------------------------------------

    def heartbeat(
        self, timeout: int | None = None, pipeline: Any = None, raise_errors: bool = False, check_registration: bool = False
    ) -> None:
        """rq's heartbeat is three commands (HSET, EXPIRE, EXPIRE) sent one by one, and rq
        heartbeats three times between two jobs: here each is one pipeline, one round trip.
        A Redis outage is ridden out (raised only with ``raise_errors``). ``check_registration``
        (the heartbeat thread): the same round trip checks that the worker is still registered,
        and registers it again if Redis lost it (``worker.service.registration``)."""
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        registration = self.registration if check_registration else None
        with self.connection.pipeline() as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            if registration is not None:
                registration.queue_check(pipe)
            try:
                replies = pipe.execute()
                if registration is not None:
                    registration.repair(replies)
            except REDIS_DOWN as exc:
                if raise_errors:
                    raise
                self.log.debug("Worker %s: heartbeat failed: %s", self.name, exc)

    def heartbeat_current_job(self) -> None:
        """What a forking worker's parent does while it waits for the horse."""
        execution = self.execution
        if execution is not None:
            self.maintain_heartbeats(execution.job, execution)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """rq's stop-job / stop-execution: there is no horse; stop the container instead."""
        if self._stopped_job_id:
            runtime_module.current().stop_by_rq(self._stopped_job_id)

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

    # -- Redis outages (worker.faults.outage) -----------------------------------------

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            return super().set_state(state, pipeline=pipeline)
        try:
            super().set_state(state)
        except REDIS_DOWN as exc:
            self._state = state
            self.log.debug("Worker %s: state %s not saved: %s", self.name, state, exc)

    def check_for_suspension(self, burst: bool) -> None:
        def away(exc: Exception, failures: int) -> None:
            self.log.error("Worker %s: Redis unreachable (%s); retrying", self.name, exc)

        ride_out_outage(lambda: super(DockrqWorker, self).check_for_suspension(burst), away)

    def run_maintenance_tasks(self) -> None:
        try:
            with self._holding_stop():
                super().run_maintenance_tasks()
        except REDIS_DOWN as exc:
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
        whose outcome says it succeeded, or leave it started).

        Every finished execution's rq job is recorded here (the worker's own, and those
        ``worker.faults.settle.finish`` ends: after an outage, adopted, reaped), always
        through ``DockrqJob._handle_success``: no rq Result (``rq:results:ID``)."""
        job = as_dockrq_job(job)

        def away(exc: Exception, failures: int) -> None:
            self.log.warning("Worker %s: recording job %s as finished failed (%s); retrying", self.name, job.id, exc)

        ride_out_outage(
            lambda: super(DockrqWorker, self).handle_job_success(job, queue, started_job_registry, execution),
            away,
        )

    def _finalize_failure(self, job: Job, queue: Queue, execution: Any, exc_info: Any) -> None:
        """rq's handling of a job that raised; a run that left the execution to the live worker
        owning its container is not a failure: only this worker's rq execution is dropped
        (worker.faults.contested)."""
        if isinstance(exc_info[1], ExecutionOwnedElsewhere):
            contested.step_back(self, job, queue, execution, exc_info[1])
            return
        super()._finalize_failure(job, queue, execution, exc_info)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """rq logs a job's exception as a traceback at ERROR (``BaseWorker.handle_exception``); a job
        ``DockrqJob`` refused (``RefusedJob``: not a dockrq execution, nothing ran) is one warning
        line instead. rq's exception handlers still run; rq's failure bookkeeping (status
        ``failed``, FailedJobRegistry, the traceback as the job's ``exc_info``) is unchanged."""
        if not isinstance(exc_info[1], RefusedJob):
            return super().handle_exception(job, *exc_info)
        self.log.warning(
            "Worker %s: job %s (function %.120r) refused, nothing run: %s", self.name, job.id, job.func_name, exc_info[1]
        )
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        self._performed_job_id = job.id
        return super().perform_job(job, queue, execution)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """rq's execute_job, counted (worker.observe.metrics), with the job's id on its log lines,
        and settled once Redis is back if Redis failed around it."""
        self._performed_job_id = None
        metrics.job_taken(job.enqueued_at)
        try:
            with logformat.execution_context(job.id):
                super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            self.log.error("Worker %s: Redis failed around job %s (%s); settling it once Redis is back", self.name, job.id, exc)
            ride_out_outage(self.connection.ping)
            settle_after_outage(self, job, queue, self._performed_job_id)

    # -- Docker outages ------------------------------------------------------------------

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        self._wait_for_docker()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _wait_for_docker(self) -> None:
        wait_for_docker(self, self._holding_stop)
