"""rq's worker bookkeeping with fewer Redis commands (issue 14).

rq writes its worker hash more often than anything needs: between two jobs it
sets the state ``idle`` twice and heartbeats three times (each ``HSET`` +
``EXPIRE`` + ``EXPIRE``, wrapped in ``MULTI``/``EXEC``), checks for
``rq suspend`` inside another transaction with a fourth heartbeat, and writes
each finished job's return value into a results stream of its own (a stream
costs about 4.7 KB of Redis memory for the retention). :class:`FewerCommands`,
mixed into ``DockrqWorker``, keeps what these writes mean and drops the repeats:

- a heartbeat within ``BEAT_DEDUPE_SECONDS`` of one that set at least as long a
  TTL is not sent again (also on a pipeline: rq queues one in several of its transactions) (the hash's TTL and ``last_heartbeat`` differ by under a second);
- the state is written when it changes (and at least every ``STATE_REWRITE_SECONDS``);
- ``rq suspend`` is checked with one ``EXISTS``; rq's loop runs only when suspended;
- a job's start is one transaction: rq's ``prepare_execution`` (execution record,
  StartedJobRegistry, state ``busy``) and ``prepare_job_execution`` (heartbeat, job
  ``started``, ``PERSIST``, intermediate queue) went out as two, after a heartbeat of
  their own once the job was dequeued; the job's own ``last_heartbeat`` is written
  once (``prepare_for_execution`` sets it), not again by ``Job.heartbeat``, and
  ``handle_execution_ended`` keeps the end time for the job's final save instead of
  writing a heartbeat of its own a moment before it; the worker's return to ``idle``
  and its idle heartbeat go in the job's success transaction;
- an idle worker heartbeats every ``idle_heartbeat_seconds`` (``DOCKRQ_IDLE_HEARTBEAT_SECONDS``)
  instead of every ``heartbeat_seconds``: liveness is only ever judged for a worker
  that owns a started job (worker.faults.liveness), and starting a job heartbeats.

:class:`LeanScheduler` is rq's scheduler (one per deployment holds the lock and
moves due scheduled jobs to their queue every second) with its lock heartbeat
(8 commands) every ``SCHEDULER_BEAT_SECONDS`` instead of every second; the lock
lives ``interval + 60`` s, so it is refreshed at least twice before it could lapse.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.executions import Execution
from rq.job import JobStatus
from rq.queue import Queue
from rq.utils import now, utcformat
from rq.worker.base import WorkerStatus
from rq.scheduler import RQScheduler
from rq.suspension import WORKERS_SUSPENDED

from schemas.connections import REDIS_DOWN, ride_out_outage

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.job import Job

BEAT_DEDUPE_SECONDS = 1.0
STATE_REWRITE_SECONDS = 60.0
SCHEDULER_BEAT_SECONDS = 20.0


class FewerCommands:
    """Mixin for an rq worker class (before rq's classes in the bases)."""

    _beat_at = float("-inf")  # monotonic time of the last heartbeat sent (or queued on a pipeline)
    _beat_ttl = 0
    _state_written: str | None = None
    _idle_queued = False  # the success transaction being built sets the worker idle
    _state_written_at = float("-inf")
    _job_taken = False  # a job was just dequeued: its start transaction carries the heartbeat
    _prepared_job_id: str | None = None  # the job whose start prepare_execution wrote whole

    # -- heartbeats --------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if self._job_taken:  # rq's one heartbeat right after a dequeue: prepare_execution sends it
            self._job_taken = False  # with the job's start; only that one is skipped, whatever follows
            return
        ttl = int(timeout or self.worker_ttl + 60)  # type: ignore[attr-defined] - rq's default
        at = time.monotonic()
        if at - self._beat_at < BEAT_DEDUPE_SECONDS and self._beat_ttl >= ttl:
            return  # one went out a moment ago, with as long a TTL
        super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
        self._beat_at, self._beat_ttl = at, ttl

    def reorder_queues(self, reference_queue: Queue) -> None:
        """rq calls this right after a dequeue that returned a job, before its own heartbeat."""
        self._job_taken = True
        super().reorder_queues(reference_queue)  # type: ignore[misc]

    def beat_is_older_than(self, seconds: float) -> bool:
        """Whether the last heartbeat went out more than ``seconds`` ago (the heartbeat thread asks)."""
        return time.monotonic() - self._beat_at >= seconds

    # -- a job's start and end ---------------------------------------------------------

    def prepare_execution(self, job: Job) -> Execution:
        """rq's ``prepare_execution`` and ``prepare_job_execution`` (rq 3.0, ``rq/executions.py``
        and ``BaseWorker.prepare_job_execution``) as one transaction: the same writes, minus
        the repeats (see the module docstring). Raises what the pipeline raises (RedisError)."""
        self._job_taken = False
        ttl = self.get_heartbeat_ttl(job)  # type: ignore[attr-defined]
        with self.connection.pipeline() as pipe:  # type: ignore[attr-defined]
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)  # type: ignore[attr-defined]
            self.executions[execution.id] = execution  # type: ignore[attr-defined]
            self._state_beat(WorkerStatus.BUSY, ttl, pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)  # type: ignore[attr-defined] - last_heartbeat too
            pipe.persist(job.key)
            if len(self.queues) == 1:  # type: ignore[attr-defined] - as rq's perform_job decides
                pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)  # type: ignore[attr-defined]
            pipe.execute()
        self._prepared_job_id = job.id
        return execution

    def _state_beat(self, state: str, ttl: int, pipe: Pipeline, *, now_local: bool = True) -> None:
        """rq's ``set_state(state)`` and ``heartbeat(ttl)`` as one ``HSET`` and ``EXPIRE``s.

        rq's heartbeat also sets the TTL of the worker's executions set: at a job's start
        that brings it back from ``Execution.create``'s ``ttl + 60`` to the execution
        record's ``ttl`` (a set that outlived the record of a worker killed mid-job made
        rq's ``Worker.get_current_job`` raise KeyError); at its end the same transaction
        removes the set's one member, which deletes it.

        ``now_local=False``: the worker's own state (``get_state``, which rq's signal handler
        reads) changes only when the caller says the pipeline ran (``_idle_after``)."""
        stamp = now()
        pipe.hset(self.key, mapping={"state": state, "last_heartbeat": utcformat(stamp)})  # type: ignore[attr-defined]
        pipe.expire(self.key, ttl)  # type: ignore[attr-defined]
        if state == WorkerStatus.BUSY:  # as rq's heartbeat: the index lives no longer than the record
            pipe.expire(self.executions_key, ttl)  # type: ignore[attr-defined]
        if now_local:
            self._state = state  # what rq's set_state and heartbeat keep
        self.last_heartbeat = stamp
        self._state_written, self._state_written_at = state, time.monotonic()
        self._beat_at, self._beat_ttl = time.monotonic(), ttl

    def increment_successful_job_count(self, pipeline: Pipeline | None = None) -> None:
        """rq calls this inside a job's success transaction (``handle_job_success``): the worker's
        return to ``idle``, and its idle heartbeat, go in that transaction too."""
        super().increment_successful_job_count(pipeline=pipeline)  # type: ignore[misc]
        if pipeline is not None and len(self.executions) <= 1:  # type: ignore[attr-defined]
            self._state_beat(WorkerStatus.IDLE, self.worker_ttl + 60, pipeline, now_local=False)  # type: ignore[attr-defined]
            self._idle_queued = True

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """rq's success transaction; the worker is ``idle`` for itself only once it has run.

        The worker stays ``busy`` while the transaction runs, as under rq (whose worker goes
        idle after it): a stop signal then arriving (a pool's SIGINT, rq's ``_shutdown``) asks
        for a stop after the job instead of raising ``StopRequested`` inside redis-py's reply
        parsing, which broke the transaction and hung the worker."""
        self._idle_queued = False
        super().handle_job_success(job, queue, started_job_registry, execution)  # type: ignore[misc]
        if self._idle_queued:
            self._idle_queued = False
            self._state = WorkerStatus.IDLE  # type: ignore[attr-defined]

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if self._prepared_job_id == job.id:  # written with the execution record
            self._prepared_job_id = None
            self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")  # type: ignore[attr-defined]
            return
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """rq writes the job's ``last_heartbeat`` here and saves the whole job (that field
        included) a moment later, ending it: the end time is kept for that save."""
        job.ended_at = now()
        job.last_heartbeat = job.ended_at

    # -- state -------------------------------------------------------------------------

    def set_state(self, state: str, pipeline: Any = None) -> None:
        at = time.monotonic()
        if state == self._state_written and at - self._state_written_at < STATE_REWRITE_SECONDS:
            self._state = state  # type: ignore[attr-defined] - what rq's own set_state keeps
            return
        super().set_state(state, pipeline=pipeline)  # type: ignore[misc]
        self._state_written, self._state_written_at = state, at

    # -- rq suspend --------------------------------------------------------------------

    def check_for_suspension(self, burst: bool) -> None:
        if not self.connection.exists(WORKERS_SUSPENDED):  # type: ignore[attr-defined]
            return
        super().check_for_suspension(burst)  # type: ignore[misc]

    # -- rq's scheduler --------------------------------------------------------------------

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """rq's ``BaseWorker._start_scheduler`` (rq 3.0) with :class:`LeanScheduler` in place of ``RQScheduler``."""
        self.scheduler = LeanScheduler(
            self.queues,  # type: ignore[attr-defined]
            connection=self.connection,  # type: ignore[attr-defined]
            logging_level=logging_level if logging_level is not None else self.log.level,  # type: ignore[attr-defined]
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,  # type: ignore[attr-defined]
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()


class LeanScheduler(RQScheduler):
    """rq's scheduler; its lock heartbeat every ``SCHEDULER_BEAT_SECONDS`` rather than every ``interval``.

    rq forks it from the worker (``RQScheduler.start``: a ``ForkProcess``); it ends with
    its worker even when the worker is SIGKILLed, instead of living on as an orphan that
    holds the scheduler lock so no replacement worker can take it.
    """

    _beat_at = float("-inf")
    _worker_pid = 0

    def start(self) -> Any:
        self._worker_pid = os.getpid()
        return super().start()

    def work(self) -> None:
        """rq's loop, ridden through Redis outages: rq's own ``run`` lets the first
        ConnectionError end the process (a traceback on stderr), and its worker starts a
        new scheduler only at its next maintenance (every 10 minutes), so executions
        submitted with a delay or a retry backoff would wait that long after any Redis
        restart. Redis away: one warning, retried with backoff (redis-py's ``Retry``); rq's
        heartbeat re-acquires a lock a restart without persistence lost."""
        _end_with_parent(self._worker_pid)

        def away(exc: Exception, failures: int) -> None:
            if failures == 1:
                self.log.warning("scheduler: Redis unreachable (%s); retrying", exc)

        try:
            ride_out_outage(lambda: RQScheduler.work(self), away, keep_trying=lambda: not self._stop_requested)
        except REDIS_DOWN:  # asked to stop while Redis is away: its locks expire on their own
            self.log.info("scheduler: stopping while Redis is unreachable")

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at < SCHEDULER_BEAT_SECONDS:
            return
        super().heartbeat()
        self._beat_at = now


def record_success(job: Job, result_ttl: int, pipeline: Pipeline) -> None:
    """rq's ``Job._handle_success`` minus ``Result.create``: one copy of the result.

    The execution's result is its outcome (``P:exec:ID:outcome``); rq's results
    stream ``rq:results:ID`` held a summary of it (``{execution_id, status,
    exit_code}``) in a stream of its own, about 4.7 KB for the retention, and is
    no longer written for dockrq executions that finish. The job still ends
    ``finished``, in rq's FinishedJobRegistry for ``result_ttl``, as rq-dashboard,
    ``dockrq ls`` and the reaper expect; ``Job.return_value()`` is None (read the
    outcome). The status goes in the same ``HSET`` as the rest of the job.
    """
    job._status = JobStatus.FINISHED
    job.save(pipeline=pipeline, include_meta=False, include_result=False)
    if result_ttl != 0:
        job.finished_job_registry.add(job, result_ttl, pipeline)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``); rq's
    scheduler handles SIGTERM by releasing its locks and stopping. If the parent died
    already, the signal comes now. Elsewhere than Linux this does nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
