"""The rq job class of dockrq workers: they run ``worker.jobs.execute`` and nothing else.

rq runs whatever importable callable a job's data names, with whatever
arguments, and imports the callbacks it names: anyone who can write to the
queue could otherwise run ``os.system`` on the worker host, around every limit
of the worker's policy. ``DockrqJob`` refuses, before anything is imported,
any job that is not exactly ``worker.jobs.execute(request)`` in rq's JSON
format, and writes a ``rejected`` outcome for it so its waiters do not hang.
rq then records the job as failed.

It also bounds the job's size (DOCKRQ_MAX_REQUEST_BYTES): the dockrq producer
refuses larger requests, but anything that writes the wire format may not. rq
inflates a job's zlib-compressed data whole as it loads the job, before any
dockrq code runs, so the size is checked there, inflating no more than the
limit: a larger job (a 200 MB env value, a zip bomb of a few KB) is rejected
without ever being inflated in the worker, and rq's failure bookkeeping writes
its stored data back as it was.
"""

from __future__ import annotations

import logging
import re
import zlib
from typing import Any

from rq.exceptions import DeserializationError
from rq.job import Job
from rq.utils import import_job_class

from schemas import EXECUTION_ID_PATTERN, JOB_FRAMING_BYTES, JOB_FUNCTION, ExecutionStatus, Outcome

from worker.service import runtime as runtime_module
from worker.service.bookkeeping import record_success

log = logging.getLogger(__name__)

_ID_RE = re.compile(EXECUTION_ID_PATTERN)


class RefusedJob(Exception):
    """The rq job is not a dockrq execution; it was not run (raised by ``DockrqJob._execute``;
    ``DockrqWorker.handle_exception`` logs it as one line, no traceback)."""


class DockrqJob(Job):
    _oversized: bytes | None = None  # the stored data of a job over the size limit, never inflated

    def restore(self, raw_data: Any) -> Any:
        limit = runtime_module.current().settings.max_request_bytes
        key = b"data" if b"data" in raw_data else "data"
        stored = raw_data.get(key)
        self._oversized = None
        if not isinstance(stored, bytes) or not _larger_than(stored, limit + JOB_FRAMING_BYTES):
            return super().restore(raw_data)
        restored = super().restore({**raw_data, key: b""})
        self._oversized = stored
        return restored

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        # rq saves the whole hash when it records the job as failed: keep the stored data as it is.
        obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        if self._oversized is not None:
            obj["data"] = self._oversized
        return obj

    def _handle_success(self, result_ttl: int, pipeline: Any, *args: Any, **kwargs: Any) -> None:
        """One copy of the result: the outcome, not rq's results stream as well (``record_success``)."""
        record_success(self, result_ttl, pipeline)

    def cleanup(self, ttl: int | None = None, pipeline: Any = None, remove_from_queue: bool = True) -> None:
        """rq's ``Job.cleanup`` (rq 3.0), without the ``EXPIRE`` of a dependencies set that a job
        with no dependencies never had (an execution submitted without ``depends_on``)."""
        if ttl is not None and ttl > 0 and not self._dependency_ids:
            connection = pipeline if pipeline is not None else self.connection
            connection.expire(self.key, ttl)
            connection.expire(self.dependents_key, ttl)
            return
        super().cleanup(ttl, pipeline, remove_from_queue)

    @property
    def func_name(self) -> str:
        # rq reads the name for its process title before running the job: undecodable
        # data must get as far as _execute, which refuses it and writes the outcome.
        try:
            return super().func_name
        except DeserializationError:
            return "<undecodable job data>"

    def _execute(self) -> Any:
        problem = self.refusal()
        if problem is not None:
            write_rejected(self, problem)
            raise RefusedJob(problem)
        return super()._execute()

    def refusal(self) -> str | None:
        """Why this job must not run, or None for a well-formed dockrq execution."""
        if self._oversized is not None:
            limit = runtime_module.current().settings.max_request_bytes
            return (
                f"request: more than {limit + JOB_FRAMING_BYTES} bytes of rq job data, "
                f"above this worker's limit {limit} (DOCKRQ_MAX_REQUEST_BYTES)"
            )
        try:
            func_name, instance, args, kwargs = super().func_name, self.instance, self.args, self.kwargs
        except DeserializationError:
            return "rq job: its data is not rq JSON (dockrq jobs are enqueued with rq's JSONSerializer)"
        if func_name != JOB_FUNCTION:
            return f"rq job: function {str(func_name)[:120]!r} is not {JOB_FUNCTION}; dockrq workers run nothing else"
        if instance is not None or not isinstance(args, list | tuple) or len(args) != 1 or kwargs:
            return f"rq job: {JOB_FUNCTION} takes exactly one positional argument, the request"
        if self._success_callback_name or self._failure_callback_name or self._stopped_callback_name:
            return "rq job: callbacks are not allowed on dockrq executions"
        return None

    # Callbacks name functions to import and call in the worker: never resolved here.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


def dockrq_job_class(job_class: type[Job] | str | None) -> type[DockrqJob]:
    """The job class a dockrq worker runs with, given the ``job_class`` it was built with.

    A subclass of :class:`DockrqJob` (class or rq's dotted import path) is kept; anything
    else, ``None`` and rq's own ``Job`` included, is :class:`DockrqJob`. rq's
    ``WorkerPool`` passes ``job_class=Job`` to every member (``rq.worker_pool.run_worker``,
    rq 3.0) and plain ``rq worker`` its ``--job-class`` default: a worker built that way ran
    rq's ``Job``, which neither refuses non-dockrq jobs nor skips rq's results stream."""
    if isinstance(job_class, str):
        job_class = import_job_class(job_class)
    if isinstance(job_class, type) and issubclass(job_class, DockrqJob):
        return job_class
    return DockrqJob


def as_dockrq_job(job: Job) -> DockrqJob:
    """``job`` as a :class:`DockrqJob` (the same object), for its success bookkeeping.

    A job fetched as rq's ``Job`` (by a reaper, an adopter, other code) would record its
    success with rq's ``Job._handle_success``, whose ``Result.create`` writes the results
    stream ``rq:results:ID`` (~4.7 KB for the retention). ``DockrqJob`` adds no instance
    state of its own (``_oversized`` defaults to None on the class), so the object's class
    is switched in place; a ``DockrqJob`` (or subclass), or what is no rq ``Job``, is returned as it is."""
    if isinstance(job, Job) and not isinstance(job, DockrqJob):
        job.__class__ = DockrqJob
    return job  # type: ignore[return-value] - its class is DockrqJob now


def _larger_than(stored: bytes, limit: int) -> bool:
    """Whether a job's stored data is over ``limit`` bytes once inflated, inflating at most limit + 1.

    As rq reads it: zlib-compressed, or (when it is not a whole zlib stream) the bytes as they are.
    """
    inflater = zlib.decompressobj()
    try:
        inflated = len(inflater.decompress(stored, limit + 1))
    except zlib.error:
        return len(stored) > limit
    return inflated > limit or (not inflater.eof and len(stored) > limit)


def write_rejected(job: Job, message: str) -> None:
    """The ``rejected`` outcome of a refused job, when its id can be an execution id. Logged at
    DEBUG only: the worker logs the refusal in one line (``DockrqWorker.handle_exception``)."""
    if not isinstance(job.id, str) or not _ID_RE.match(job.id):
        log.debug("refused rq job with an id that is no execution id: %s", message)
        return
    log.debug("execution %s: %s", job.id, message)
    channels = runtime_module.current().channels(job.id, job)
    channels.send_eof()
    channels.finish(Outcome.failure(job.id, ExecutionStatus.REJECTED, "invalid_request", message))
