"""The rq worker class that runs dockrq executions.

A non-forking ``SimpleWorker``: containers already isolate the work, so a
work horse per job would only add a fork and a fresh Docker client to every
execution. What forking workers get from their monitoring parent -- heartbeats
while the job runs, ``stop-job`` killing the horse -- is provided here through
the runtime instead; rq's signal handling (SIGTERM: finish the current job;
second SIGTERM: ``SystemExit`` in the job) is kept as is and the job function
turns it into a stopped container and a written outcome.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from . import logformat, metrics
from . import runtime as runtime_module
from .resilience import ResilientWorker
from .rq_job import DockrqJob


class _NoJobArguments(logging.Filter):
    """rq attaches a failed job's arguments to its error record (``extra``); a
    structured log handler would print them, and they hold environment values."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("arguments", "kwargs"):
            if hasattr(record, name):
                setattr(record, name, "<hidden>")
        return True


_no_job_arguments = _NoJobArguments()


class DockrqWorker(ResilientWorker, SimpleWorker):
    """SimpleWorker + the dockrq runtime; JSON serializer unless told otherwise.

    ResilientWorker adds the heartbeat thread, the reaper (adoption of a dead
    predecessor's containers included) and the Redis/Docker outage handling.
    """

    job_class = DockrqJob  # runs worker.jobs.execute(request) and nothing else

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("serializer") is None:
            kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)
        # rq logs job descriptions at INFO; a description made by something other
        # than the dockrq producer is the call string, with environment values in it.
        self.log_job_description = False
        self.log.addFilter(_no_job_arguments)  # idempotent: one filter object

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        runtime = runtime_module.current()
        runtime.executor  # noqa: B018 - fail before registering if Docker is unreachable
        runtime.worker = self
        super().bootstrap(*args, **kwargs)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            runtime = runtime_module.current()
            if runtime.worker is self:
                runtime.worker = None
                runtime.close()

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None, raise_errors: bool = False) -> None:
        """rq's heartbeat is three commands (HSET, EXPIRE, EXPIRE) sent one by one, and rq
        heartbeats three times between two jobs: here each is one pipeline, one round trip.
        A Redis outage is ridden out as ResilientWorker does (raised only with ``raise_errors``)."""
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline=pipeline)
        with self.connection.pipeline() as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            try:
                pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if raise_errors:
                    raise
                self.log.debug("Worker %s: heartbeat failed: %s", self.name, exc)

    def execute_job(self, job: Any, queue: Any) -> None:
        """rq's execute_job, counted (worker.metrics) and with the job's id on its log lines."""
        metrics.job_taken(job.enqueued_at)
        with logformat.execution_context(job.id):
            super().execute_job(job, queue)

    def heartbeat_current_job(self) -> None:
        """What a forking worker's parent does while it waits for the horse."""
        execution = self.execution
        if execution is not None:
            self.maintain_heartbeats(execution.job, execution)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """rq's stop-job / stop-execution: there is no horse; stop the container instead."""
        if self._stopped_job_id:
            runtime_module.current().stop_by_rq(self._stopped_job_id)
