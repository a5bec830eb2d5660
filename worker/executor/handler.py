"""One execution's life, from pull to removal, owned by one handler.

The seed tied an execution to its caller's context and read output only after
the container ended; here the execution lives in its own threads (an attach
reader and a supervisor), output is read while the container runs, time limits
are the request's own, and the result is classified only after wait *and*
inspect: the exit code comes from wait, OOM from inspect, cancel and timeout
from what this handler itself asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timezone
from typing import Any

from schemas import ExecutionRequest, ExecutionResult, ExecutionState, ExecutionStatus

from .classify import Ending, StopRequests, classify
from .daemon_away import DAEMON_RECOVERY_SECONDS, lost_connection, wait_surviving_daemon
from .deadlines import DEADLINES, Deadline
from .threads import REUSE, Ran
from .client import Attached, DockerClient, ImageMissing, PullHandle
from .errors import (
    DAEMON_ERRORS,
    DaemonError,
    ExecutionAlreadyFinished,
    ExecutionOwnedElsewhere,
    ImagePullError,
    StartError,
    StartFailed,
)
from .leftover import ENDED_STATES, find_leftover, finish_late_attach, open_output
from .files import ExecutionFiles
from .oom import OomWatcher
from .output import OutputLog
from .owned import OwnerCheck, check_not_owned_elsewhere
from .pull import PresentImage, ProgressCallback
from .spec import ContainerSpec

log = logging.getLogger(__name__)

# After the container stops, its output is drained within this time at most.
DRAIN_SECONDS = 30.0
OOM_EVENT_WAIT = 3.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ExecutionHandler:
    def __init__(
        self, request: ExecutionRequest, client: DockerClient, *, grace: float, keep: bool, oom: OomWatcher,
        progress: ProgressCallback | None = None, files: ExecutionFiles | None = None,
        owner_alive: OwnerCheck | None = None,
    ) -> None:
        self.request = request
        self.execution_id = request.execution_id
        self.output = OutputLog(request.output_limit_bytes)
        self.state = ExecutionState.QUEUED
        self.container_id: str | None = None
        self.adopted = False
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.finished_monotonic: float | None = None
        self.done: Future[ExecutionResult] = Future()

        self._client = client
        self._grace = grace
        self._keep = keep
        self._oom = oom
        self._files = files
        self._owner_alive = owner_alive  # another live worker owns an existing container (owned.py)
        self._lock = threading.Lock()
        self._running = False
        self._stop_reason: ExecutionStatus | None = None
        self._timer: Deadline | None = None  # timeout_seconds, on the process's one deadlines thread
        self._reader: Ran | None = None  # the attach reader, on a reused thread
        self._attached: Attached | None = None
        self._pull = PullHandle()
        self._progress = progress
        self.image: PresentImage | None = None
        self.pull_seconds: float | None = None  # the pull made for this execution, if any
        self._container_image: str | None = None  # the image id the container was made from
        self._created_here = False
        self._waiting_for_daemon = False
        self._late_attach = False  # attached to a container already running (adopted)
        self._received = {"stdout": 0, "stderr": 0}  # bytes read per stream (before any cap)
        self._stops = StopRequests()  # and whether one of them ended the container
        self._stop_grace = 0.0  # the longest grace a stop was sent with (seconds)

    @property
    def finished(self) -> bool:
        return self.done.done()

    # -- start ----------------------------------------------------------------
    def launch(self, spec: ContainerSpec) -> None:
        """Pull, create (or adopt), attach, start. Synchronous so start() can raise
        the typed error; on failure the execution is finished with status error.

        If the daemon goes away meanwhile (restart, upgrade), the start waits for it
        to come back (``DAEMON_RECOVERY_SECONDS``) and is made again: an execution
        taken while dockerd restarts runs once it is back instead of failing.
        """
        give_up = time.monotonic() + DAEMON_RECOVERY_SECONDS
        while True:
            try:
                if not self._start_container(spec):
                    return  # cancelled before it ran
                break
            except ExecutionOwnedElsewhere:
                raise  # nothing was made or touched here: no result, the owner's run goes on
            except Exception as exc:  # noqa: BLE001 - every start error leaves a finished execution
                if not isinstance(exc, (StartError, *DAEMON_ERRORS)):
                    log.exception("execution %s: start failed", self.execution_id)
                    err = StartFailed(f"starting the container failed: {type(exc).__name__}: {exc}")
                    self._fail(err)
                    raise err from exc
                if self._daemon_came_back(exc, give_up):
                    log.warning("execution %s: the Docker daemon went away during start; starting again", self.execution_id)
                    self._detach()
                    if self._reader is not None:
                        self._reader.join(2)
                        self._reader = None
                    continue
                if isinstance(exc, StartError):
                    self._fail(exc)
                    raise
                err = DaemonError(f"the Docker daemon failed during start: {exc}")
                self._fail(err)
                raise err from exc
        self._running_now()

    def _daemon_came_back(self, exc: BaseException, give_up: float) -> bool:
        """After a failed start: was it the daemon's connection, and is the daemon back (in time)?"""
        if self._stop_reason is not None or time.monotonic() > give_up or not lost_connection(exc):
            return False
        self._waiting_for_daemon = True
        try:
            while not self._client.ping():
                if self._stop_reason is not None or time.monotonic() > give_up:
                    return False
                time.sleep(0.5)
            return self._stop_reason is None
        finally:
            self._waiting_for_daemon = False

    def _start_container(self, spec: ContainerSpec) -> bool:
        """One attempt at pull, create (or adopt), attach, start; False if cancelled first."""
        self.state = ExecutionState.PULLING
        # A container of this execution may exist already (a predecessor's, whatever its
        # name): found by its labels, it is followed, never doubled (worker.executor.leftover).
        leftover = None if self._created_here else find_leftover(self._client, spec.labels)
        if leftover is not None:
            self.container_id, created = leftover.id, False
        else:
            self._ensure_image()
            try:
                self.container_id, created = self._client.create(spec)
            except ImageMissing:  # removed since the client last saw it: once more, per the pull policy
                self._ensure_image()
                self.container_id, created = self._client.create(spec)
        if created:
            status = "created"
        else:
            inspected = self._client.inspect(self.container_id)
            status = inspected["State"]["Status"]
            if not self._created_here:  # another live worker's: leave it (and the execution) to it
                check_not_owned_elsewhere(inspected, self._owner_alive)
        must_start = status == "created"
        if created:
            self._created_here = True
        elif not self._created_here:  # a predecessor's container: follow it instead of starting a twin
            self.adopted = True
            log.info("execution %s: adopting existing container %s (%s)", self.execution_id, self.container_id[:12], status)
        stdin = self.request.stdin_bytes if must_start else None  # docker run -i; a running adoptee had its input
        self._late_attach = not must_start and status not in ENDED_STATES
        self._attached = open_output(self._client, self.container_id, status, created=created, stdin=stdin is not None)
        frames = self._attached.frames()
        self._reader = REUSE.run(lambda: self._read(frames), f"dockrq-out-{self.execution_id}")  # threads.py
        if stdin is not None:
            self._attached.send_stdin(stdin, name=f"dockrq-in-{self.execution_id}")
        with self._lock:
            cancelled_early = self._stop_reason is not None
        if cancelled_early:
            self._end_before_running(self._result(ExecutionStatus.CANCELLED))
            return False
        if must_start:
            if self._files is not None:  # files.py: inputs go in after create, before start
                self._files.put_inputs(self._client, self.container_id, self.request)
            self._client.start(self.container_id)
        return True

    def _ensure_image(self) -> None:
        """Make the image present per the pull policy; record the pull (seconds, size) if one was made."""
        image, began = self.request.engine.image, time.monotonic()
        try:
            self.image = self._client.ensure_image(image, self.request.pull_policy, self._pull, self._progress)
        except ImagePullError:
            if self.request.pull_policy != "never":
                self.pull_seconds = (self.pull_seconds or 0.0) + time.monotonic() - began
            raise
        pulled = self.image.pull
        if pulled is not None:
            self.pull_seconds = (self.pull_seconds or 0.0) + pulled.seconds
            log.info(
                "execution %s: pulled %s (%.1f MB in %d layers, digest %s) in %.1f s", self.execution_id, image,
                pulled.bytes_downloaded / 1e6, pulled.layers, self.image.digest or "-", pulled.seconds,
            )

    def _running_now(self) -> None:
        self.started_at = _now()
        with self._lock:
            self._running = True
            self.state = ExecutionState.RUNNING
            stop_now = self._stop_reason is not None
        if self.request.timeout_seconds is not None:
            self._timer = DEADLINES.call_later(self.request.timeout_seconds, lambda: self._stop(ExecutionStatus.TIMED_OUT))
        REUSE.run(self._supervise, f"dockrq-exec-{self.execution_id}")
        if stop_now:
            self._stop(self._stop_reason or ExecutionStatus.CANCELLED)

    # -- stop -----------------------------------------------------------------
    def cancel(self, grace: float | None = None) -> None:
        if self.finished:
            raise ExecutionAlreadyFinished(f"execution {self.execution_id} has already finished")
        self._stop(ExecutionStatus.CANCELLED, grace)

    def _stop(self, reason: ExecutionStatus, grace: float | None = None) -> None:
        """First reason wins; the container is stopped (SIGTERM, grace, SIGKILL) off
        the caller's thread so cancel() returns at once."""
        with self._lock:
            if self.finished:
                return
            if self._stop_reason is None:
                self._stop_reason = reason
            pulling = self.state == ExecutionState.PULLING
            if self._running and self.container_id:
                if grace is None:  # docker run --stop-timeout: the request's own grace, else the executor's
                    grace = self._grace if self.request.stop_timeout is None else self.request.stop_timeout
                self._stop_grace = max(self._stop_grace, grace)
                # sent under the lock that set the reason: whoever sees the reason can wait for its answer
                self._stops.send(lambda: self._stop_container(grace))
        if pulling:
            self._pull.abort()  # a cancel does not wait for a slow (or hung) pull

    def _stop_container(self, grace: float) -> bool | None:
        try:
            return self._client.stop(self.container_id, grace)
        except DAEMON_ERRORS as exc:
            log.warning("execution %s: stopping container failed: %s", self.execution_id, exc)
            return None

    # -- run ------------------------------------------------------------------
    def _read(self, frames) -> None:
        try:
            for stream, data in frames:
                self._received[stream] += len(data)
                self.output.append(stream, data)
        except DAEMON_ERRORS as exc:
            if not self.finished:
                log.debug("execution %s: output stream ended: %s", self.execution_id, exc)

    def _supervise(self) -> None:
        try:
            exit_code, error = wait_surviving_daemon(
                self._client, self.container_id, self.execution_id, lambda: self._stop_reason
            )
            self._drain()
            result = self._classify(exit_code, error)
        except Exception as exc:  # never leave a waiter hanging
            log.exception("execution %s: supervisor failed", self.execution_id)
            self._drain()
            result = self._result(ExecutionStatus.ERROR, error_code=DaemonError.code, error_msg=str(exc))
        result = self._with_outputs(result)
        self._remove_container()
        self._finish(result)

    def _drain(self) -> None:
        if self._reader is not None:
            if self._late_attach and self.container_id:  # it may miss the end (worker.executor.leftover)
                finish_late_attach(
                    self._client, self.container_id, self._reader, self._received, self._detach, self._read, DRAIN_SECONDS
                )
            else:
                self._reader.join(DRAIN_SECONDS)
        self._detach()
        self.output.close()

    def _detach(self) -> None:
        attached, self._attached = self._attached, None
        if attached is not None:
            attached.close()

    def _classify(self, exit_code: int | None, error: DaemonError | None) -> ExecutionResult:
        """Wait, then inspect, then classify (worker.executor.classify): the status follows
        the main process; OOM kills of other processes are counted, not a failure."""
        oom_flag, oom_events = False, 0
        if self.container_id and error is None:
            try:
                inspected = self._client.inspect(self.container_id)
                oom_flag = bool(inspected["State"].get("OOMKilled"))
                self._container_image = inspected.get("Image")
            except DAEMON_ERRORS as exc:
                log.warning("execution %s: inspect after exit failed: %s", self.execution_id, exc)
            # Only a SIGKILL we did not send can be the OOM killer's: then give its
            # event a moment to arrive (a busy daemon delivers it late).
            suspect = exit_code == 137 and self._stop_reason is None and not oom_flag
            oom_events = self._oom.kills(self.container_id, wait=OOM_EVENT_WAIT if suspect else 0.0)
            self._oom.forget(self.container_id)
        # A stop asked until now counts; whether it ended the container is the daemon's answer.
        reason = self._stop_reason
        ended_it = self._stops.ended_it(self._stop_grace + 30) if reason is not None else None
        if error is not None and (reason is None or ended_it is False):
            return self._result(ExecutionStatus.ERROR, exit_code=exit_code, error_code=error.code, error_msg=str(error))
        verdict = classify(Ending(exit_code, oom_flag, oom_events, reason, ended_it))
        return self._result(
            verdict.status, exit_code=exit_code, oom_killed=verdict.oom_killed, oom_kills=verdict.oom_kills
        )

    def _result(self, status: ExecutionStatus, **fields: Any) -> ExecutionResult:
        return ExecutionResult(
            execution_id=self.execution_id,
            status=status,
            stdout=self.output.text("stdout"),
            stderr=self.output.text("stderr"),
            stdout_truncated=self.output.truncated("stdout"),
            stderr_truncated=self.output.truncated("stderr"),
            container_id=self.container_id,
            started_at=self.started_at,
            finished_at=_now(),
            pull_seconds=self.pull_seconds,
            **self._image_fields(),
            **fields,
        )

    def _image_fields(self) -> dict[str, str | None]:
        """image_id and image_digest of what ran: the container's own image id wins (a tag that
        moved after the pull would otherwise be reported for an image that did not run)."""
        present = self.image
        image_id = self._container_image or (present.id if present else None)
        digest = present.digest if present is not None and present.id in (None, image_id) else None
        return {"image_id": image_id, "image_digest": digest or image_id}

    # -- end ------------------------------------------------------------------
    def refuse(self, exc: StartError) -> None:
        """End the execution with ``exc`` before anything was made (e.g. the GPU device
        nodes it asks for are missing): finished with status error, as any start error."""
        self._fail(exc)

    def _fail(self, exc: StartError) -> None:
        if self._stop_reason is not None and (self._pull.aborted or self._waiting_for_daemon):
            self._end_before_running(self._result(self._stop_reason))  # cancelled while pulling / waiting
            return
        status = ExecutionStatus(getattr(exc, "status", ExecutionStatus.ERROR))  # InputsRejected: rejected
        self._end_before_running(self._result(status, error_code=exc.code, error_msg=str(exc)))

    def _end_before_running(self, result: ExecutionResult) -> None:
        """The container never ran (start failed or cancel came first): nothing to drain."""
        self._detach()
        if self._reader is not None:
            self._reader.join(2)
        self.output.close()
        result = self._with_outputs(result)
        self._remove_container()
        self._finish(result)

    def _with_outputs(self, result: ExecutionResult) -> ExecutionResult:
        """The result with the output files collected from the ended container (files.py)."""
        if self._files is None or not self.container_id or result.status == ExecutionStatus.REJECTED:
            return result
        fields = self._files.collect_outputs(self._client, self.container_id, self.request)
        return result.model_copy(update=fields) if fields else result

    def _remove_container(self) -> None:
        if self._keep or not self.container_id:
            return
        try:
            self._client.remove(self.container_id)
        except DAEMON_ERRORS as exc:
            log.warning("execution %s: removing container failed (the reaper will retry): %s", self.execution_id, exc)

    def _finish(self, result: ExecutionResult) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self.done.done():
                return
            self.state = ExecutionState(result.status.value)
            self.finished_at = result.finished_at
            self.finished_monotonic = time.monotonic()
            self.done.set_result(result)

