"""The rq job function: one execution request in, exactly one outcome out.

``execute`` is what producers enqueue (``schemas.JOB_FUNCTION``, JSON
serializer). It never lets an execution end silently: an invalid request is
``rejected``, a cancel before start is ``cancelled``, and rq's own ways of
stopping a job (its timeout, stop-job, warm/cold shutdown) stop the container
and write ``timed_out``/``cancelled`` before the exception goes back to rq.
The job's return value is a small summary; the outcome key is the real result.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import Future
from contextlib import suppress
from typing import Any

from pydantic import ValidationError
from rq import get_current_job
from rq.job import Job, Retry

from schemas import (
    EXECUTION_ID_PATTERN,
    ExecutionRequest,
    ExecutionResult,
    ExecutionState,
    ExecutionStatus,
    Outcome,
    as_json_object,
    describe_validation_error,
)
from schemas.connections import REDIS_DOWN
from worker.execution import dependencies, pulls, retries
from worker.execution.channels import ExecutionChannels
from worker.execution.files import execution_files
from worker.execution.interrupt import interruption, signals_deferred
from worker.execution.logs import LogShipper
from worker.executor import (
    DockerExecutor,
    DockerUnavailableError,
    ExecutionAlreadyFinished,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionOwnedElsewhere,
    ExecutorError,
    RequestRejected,
    StartError,
)
from worker.service import runtime as runtime_module
from worker.service.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_ID_RE = re.compile(EXECUTION_ID_PATTERN)

# Extra time, beyond the stop grace period, to wait for a cancelled container's result.
STOP_MARGIN_SECONDS = 10.0
# How long a start interrupted by shutdown may still take before the outcome is written anyway.
START_DRAIN_SECONDS = 30.0


class ExecutionStopped(Exception):
    """Raised to rq after its stop-job command ended an execution, so rq records the job as stopped."""


def execute(request: Any) -> dict[str, Any] | Retry:
    """Run one execution request (a JSON object) to its outcome; return ``{status, exit_code}``,
    or rq's ``Retry`` when the attempt ended retryable and the request has retries left
    (worker.execution.retries)."""
    return ExecutionRun(runtime_module.current(), get_current_job(), request).run()


def read_request(payload: Any, job_id: str | None) -> tuple[str | None, ExecutionRequest | None, str | None]:
    """(execution id, request, problem) of a job function's argument; the rq job id is the execution id.

    The id is None only when neither the job nor the payload gives a usable one.
    """
    try:
        payload = as_json_object(payload)
    except ValueError as exc:
        return job_id, None, f"request: not valid JSON ({exc})"
    if not isinstance(payload, dict):
        return job_id, None, "request: must be a JSON object"
    if job_id is not None and "execution_id" not in payload:
        payload = {**payload, "execution_id": job_id}
    try:
        request = ExecutionRequest.model_validate(payload)
    except ValidationError as exc:
        claimed = payload.get("execution_id")
        fallback = claimed if isinstance(claimed, str) and _ID_RE.match(claimed) else None
        return job_id or fallback, None, describe_validation_error(exc)
    if job_id is not None and request.execution_id != job_id:
        return job_id, None, f"execution_id: {request.execution_id!r} is not the rq job id {job_id!r}"
    return request.execution_id, request, None


class ExecutionRun:
    """One call of the job function: parse, check, start, supervise, report."""

    def __init__(self, runtime: WorkerRuntime, job: Job | None, payload: Any) -> None:
        self.runtime = runtime
        self.job = job
        self.payload = payload
        self.execution_id = ""
        self.channels: ExecutionChannels | None = None
        self._cancel_reason: str | None = None
        self._start_future: Future[None] | None = None
        self._started = threading.Event()  # executor.start() returned (or raised)
        self._stopped_by_rq = False
        self._finished = False
        self._outcome_abandoned = False  # Redis stayed away for outcome_retry_seconds
        self._shipper: LogShipper | None = None
        self._taken_at = pulls.now()  # when this worker took the job: the end of its queued time
        self._stop_timeout: int | None = None  # the request's --stop-timeout: its grace instead of the worker's
        self._requested_output_limit: int | None = None  # before the policy's cap (the result says if it capped)

    # -- entry -----------------------------------------------------------------

    def run(self) -> dict[str, Any] | Retry:
        execution_id, request, problem = read_request(self.payload, self.job.id if self.job is not None else None)
        if execution_id is None:
            log.error("rejected a request with no usable execution id: %s", problem)
            return {"execution_id": None, "status": ExecutionStatus.REJECTED.value, "exit_code": None}
        self.execution_id = execution_id
        self.channels = self.runtime.channels(execution_id, self.job)
        if request is None:
            assert problem is not None
            return self._end(Outcome.failure(execution_id, ExecutionStatus.REJECTED, "invalid_request", problem))

        existing, cancelled = self.channels.through_outage(self.channels.ended_or_cancelled)
        if existing is not None:
            log.info("execution %s already ended (%s); not running it again", execution_id, existing.status.value)
            return existing.summary()
        retries.begin_attempt(self)  # attempt 2 or later: the log goes on, marked
        if cancelled:
            return self._end(
                Outcome.failure(execution_id, ExecutionStatus.CANCELLED, "cancelled", "cancelled before it started")
            )
        blocked = self.channels.through_outage(
            lambda: dependencies.blocking_outcome(self.channels.connection, self.runtime.keys, self.job, execution_id)
        )
        if blocked is not None:  # a dependency did not succeed (worker.execution.dependencies)
            return self._end(blocked)
        self._requested_output_limit = request.output_files_limit_bytes
        try:  # the operator's limits (worker.config.policy); fills in the default caps
            request = self.runtime.settings.policy.check(request)
        except RequestRejected as exc:
            return self._end(Outcome.failure(execution_id, ExecutionStatus.REJECTED, exc.code, str(exc)))
        return self._run(request)

    # -- the run -------------------------------------------------------------------

    def _run(self, request: ExecutionRequest) -> dict[str, Any] | Retry:
        assert self.channels is not None
        try:
            executor = self.runtime.executor
        except DockerUnavailableError as exc:
            return self._end(Outcome.failure(self.execution_id, ExecutionStatus.ERROR, exc.code, str(exc)))
        self._stop_timeout = request.stop_timeout
        meta_before = dict(self.job.meta) if self.job is not None else None  # put back if it steps back
        self.channels.set_state(
            ExecutionState.PULLING, image=request.engine.image, pulling_at=self._taken_at,
            node=self.runtime.settings.executor_id,
        )
        try:
            with self.runtime.track(self, self.channels.connection):
                rejected = self._start(executor, request)
                if rejected is not None:
                    return self._end(rejected)
                future = executor.wait(self.execution_id)
                self._announce_running(executor, future)
                result = self._explain_cancel(self._wait(future))
                summary = self._end(Outcome.from_result(result))
        except ExecutionOwnedElsewhere as exc:  # another live worker runs it (worker.faults.contested)
            from worker.faults.contested import leave_to_owner

            return leave_to_owner(self, exc, meta_before)
        except BaseException as exc:
            # rq's timeout (SIGALRM), cold shutdown (SystemExit), Ctrl-C, a Redis
            # failure... whatever it is, the container stops and the outcome is written
            # (unless writing it is what failed: the worker settles the job once Redis is back).
            if not self._finished and not self._outcome_abandoned:
                with signals_deferred():
                    self._end(self._stop_for(executor, exc), final=True)
            raise
        if self._stopped_by_rq:
            raise ExecutionStopped(f"execution {self.execution_id} stopped by rq's stop-job command")
        return summary

    def _start(self, executor: DockerExecutor, request: ExecutionRequest) -> Outcome | None:
        """Start through the executor off the main thread; a rejected request becomes its outcome.

        The start (image pull included) runs in a helper thread so that rq's
        timeout and shutdown signals, and the heartbeats, keep working meanwhile.
        """

        assert self.channels is not None
        try:  # files in and out through Redis (files.py); a missing input archive is refused here
            files = execution_files(
                self.channels.connection, self.runtime.keys, request, self.runtime.settings.retention_seconds,
                requested_output_limit=self._requested_output_limit,
            )
        except RequestRejected as exc:
            self._started.set()
            return Outcome.failure(self.execution_id, ExecutionStatus.REJECTED, exc.code, str(exc))

        def start() -> None:
            try:
                if files is None:
                    pulls.start_with_progress(executor, request, pulls.PullPublisher(self.channels))
                else:  # files need the real executor, which takes progress too
                    executor.start(request, files=files, progress=pulls.PullPublisher(self.channels))
            finally:
                self._started.set()

        self._start_future = self.runtime.submit(start)
        try:
            self._wait(self._start_future)
        except RequestRejected as exc:
            return Outcome.failure(self.execution_id, ExecutionStatus.REJECTED, exc.code, str(exc))
        except (ExecutionAlreadyStarted, ExecutionAlreadyFinished) as exc:
            # A re-run of this execution in this process (or an adopted container):
            # follow the existing one rather than start a second.
            log.info("execution %s: %s; following the existing run", self.execution_id, type(exc).__name__)
        except StartError as exc:
            # Recorded by the executor as finished with status "error"; wait() returns it.
            log.warning("execution %s: start failed (%s): %s", self.execution_id, exc.code, exc)
        return None

    def _announce_running(self, executor: DockerExecutor, future: Future[ExecutionResult]) -> None:
        assert self.channels is not None
        if future.done():  # failed to start: there is nothing running to announce
            self._ship_logs(executor)
            return
        container_id = pull_seconds = None
        with suppress(ExecutorError):
            info = executor.info(self.execution_id)
            container_id, pull_seconds = info.container_id, getattr(info, "pull_seconds", None)
        flagged = self.channels.set_state(
            ExecutionState.RUNNING, check_cancel=True, container_id=container_id, running_at=pulls.now(),
            pull_seconds=pull_seconds,
        )
        self._ship_logs(executor)
        if flagged or self._cancel_reason:
            self.cancel(self._cancel_reason or "cancel flag set")

    def _explain_cancel(self, result: ExecutionResult) -> ExecutionResult:
        """A cancelled result says who cancelled it (the producer, rq's stop-job...)."""
        if result.status != ExecutionStatus.CANCELLED or result.error_code or not self._cancel_reason:
            return result
        code = "stopped" if self._stopped_by_rq else "cancelled"
        return result.model_copy(update={"error_code": code, "error_msg": self._cancel_reason})

    def _ship_logs(self, executor: DockerExecutor) -> None:
        assert self.channels is not None
        self._shipper = LogShipper(self.channels, executor, self.execution_id)
        self._shipper.start()

    def _wait(self, future: Future[Any]) -> Any:
        """Wait in the main thread (so rq's signals land here), heartbeating meanwhile."""
        interval = self.runtime.heartbeat_interval
        while True:
            try:
                return future.result(timeout=interval)
            except TimeoutError:
                self._keep_alive()

    def _keep_alive(self) -> None:
        assert self.channels is not None
        try:
            self.runtime.heartbeat()
            if self._cancel_reason is None and self.channels.cancel_requested():
                self.cancel("cancel flag set")
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not end the execution
            log.warning("execution %s: heartbeat failed: %s", self.execution_id, exc)

    def cancel(self, reason: str) -> None:
        """Stop the container (grace, then kill) without blocking; safe from any thread.

        Before the executor has registered the execution the request is only
        remembered, and ``_announce_running`` acts on it once the start returns.
        """
        first = self._cancel_reason is None
        self._cancel_reason = reason
        if self._try_cancel() and first:
            log.info("execution %s: cancelling (%s)", self.execution_id, reason)

    def _try_cancel(self) -> bool:
        try:
            self.runtime.executor.cancel(self.execution_id, grace_seconds=self.stop_grace)
        except (ExecutionNotFound, ExecutionAlreadyFinished):
            return False
        return True

    @property
    def stop_grace(self) -> float:
        """Seconds between SIGTERM and SIGKILL when this execution is stopped: the request's
        ``stop_timeout`` (docker run --stop-timeout), else the worker's DOCKRQ_STOP_GRACE_SECONDS."""
        return self.runtime.settings.stop_grace_seconds if self._stop_timeout is None else self._stop_timeout

    def stop_by_rq(self) -> None:
        """rq's stop-job command: cancel, and report the job to rq as stopped."""
        self._stopped_by_rq = True
        self.cancel("stopped by rq")

    # -- interruption ---------------------------------------------------------------

    def _stop_for(self, executor: DockerExecutor, exc: BaseException) -> Outcome:
        """Stop the container because ``exc`` interrupts the job; the outcome to write."""
        status, code, message = interruption(exc)
        log.warning("execution %s: interrupted (%s); stopping its container", self.execution_id, type(exc).__name__)
        result = self._stop_container(executor)
        if result is None:
            return Outcome.failure(self.execution_id, status, code, message)
        if result.status == ExecutionStatus.CANCELLED:  # our cancel ended it: say why
            result = result.model_copy(update={"status": status, "error_code": code, "error_msg": message})
        return Outcome.from_result(result)

    def _stop_container(self, executor: DockerExecutor) -> ExecutionResult | None:
        """Cancel and wait, bounded; the result, or None if there is none to have."""
        if self._start_future is None:
            return None  # interrupted before anything reached Docker
        self._try_cancel()  # a start still pulling ends as soon as its container exists
        if not self._started.wait(START_DRAIN_SECONDS):
            log.error("execution %s: start still in progress after %.0f s", self.execution_id, START_DRAIN_SECONDS)
            return None
        self._try_cancel()
        grace = self.stop_grace
        try:
            return executor.wait(self.execution_id).result(timeout=grace + STOP_MARGIN_SECONDS)
        except ExecutionNotFound:
            return None
        except TimeoutError:
            log.error("execution %s: container did not stop within %.0f s", self.execution_id, grace)
            return None

    # -- the end --------------------------------------------------------------------

    def _end(self, outcome: Outcome, *, final: bool = False) -> Any:
        """Logs eof, then the outcome, then the final event; forget the execution. Unless
        ``final``, an attempt the request retries returns rq's Retry instead, writing none of these."""
        assert self.channels is not None
        if self._shipper is not None:
            self._shipper.drain()
        retry = None if final else retries.next_attempt(self, outcome)
        if retry is not None:
            return retry
        self.channels.send_eof()
        result = outcome.result
        if result is not None and result.queued_seconds is None and self.job is not None:
            result = result.model_copy(update={"queued_seconds": pulls.queued_seconds(self.job, self._taken_at)})
            outcome = outcome.model_copy(update={"result": result})
        try:
            written = self.channels.finish(outcome, container_id=result.container_id if result else None)
        except REDIS_DOWN:
            self._outcome_abandoned = True
            self.runtime.keep_unwritten(outcome)
            self.runtime.forget(self.execution_id)
            log.error(
                "execution %s: its %s outcome is not written yet, Redis has been unreachable for %g s "
                "(DOCKRQ_OUTCOME_RETRY_SECONDS); the worker writes it once Redis is back",
                self.execution_id, outcome.status.value, self.channels.outcome_retry_seconds,
            )
            raise
        self._finished = True
        self.runtime.forget(self.execution_id)
        if written:
            log.info(
                "execution %s: %s%s", self.execution_id, outcome.status.value,
                f" (exit {outcome.exit_code})" if outcome.exit_code is not None else "",
            )
        else:
            log.info("execution %s: outcome already written by someone else", self.execution_id)
        return outcome.summary()
