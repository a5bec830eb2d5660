"""The Docker executor: the seed's Executor interface over many concurrent handlers.

It knows Docker and nothing of Redis or rq, so it can be used on its own. Its
only shared state is the map of execution id to handler, guarded by one lock
held for dictionary operations only (never across a Docker call), which makes
two concurrent starts of one id produce one container and keeps starts of
different ids fully parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as futures_wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from docker.errors import NotFound
from pydantic import ValidationError

from schemas import ExecutionRequest, ExecutionResult, ExecutionState, LogStreamRequest, describe_validation_error

from .client import DockerClient
from .errors import (
    DAEMON_ERRORS,
    DockerUnavailableError,
    ExecutionAlreadyFinished,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    ExecutionOwnedElsewhere,
    ExecutorError,
    RequestRejected,
    StartError,
)
from .files import ExecutionFiles
from .handler import ExecutionHandler
from .oom import OomWatcher
from .output import LogStream
from .owned import OwnedContainer, OwnerCheck, owned_containers
from .pull import ProgressCallback
from .spec import ExecutorPolicy, build_container_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionInfo:
    execution_id: str
    state: ExecutionState
    container_id: str | None
    adopted: bool
    started_at: datetime | None
    finished_at: datetime | None
    pull_seconds: float | None = None  # the image pull made for it, once done


@dataclass
class CleanupReport:
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class CleanupError(ExecutorError):
    code = "cleanup_failed"

    def __init__(self, report: CleanupReport) -> None:
        super().__init__("could not remove: " + "; ".join(report.errors))
        self.report = report


class DockerExecutor:
    def __init__(
        self,
        executor_id: str,
        *,
        client: DockerClient | None = None,
        allowed_mount_roots: Sequence[str] = (),
        allow_bridge_network: bool = True,
        policy: ExecutorPolicy | None = None,
        stop_grace_seconds: float = 10.0,
        pull_timeout_seconds: float = 300.0,
        retention_seconds: float = 3600.0,
        keep_containers: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not executor_id or not executor_id.strip():
            raise ValueError("executor_id must not be empty")
        self.executor_id = executor_id
        self.client = client or DockerClient(pull_timeout=pull_timeout_seconds)
        # ``policy`` (a worker's, whole) or the two options it is made of.
        self.policy = policy or ExecutorPolicy(tuple(allowed_mount_roots), allow_bridge_network)
        self.stop_grace_seconds = stop_grace_seconds
        self.retention_seconds = retention_seconds
        self.keep_containers = keep_containers
        # Extra labels on every container (e.g. dockrq.deployment); the executor's own win on a clash.
        self.labels = dict(labels or {})
        self._handlers: dict[str, ExecutionHandler] = {}
        self._lock = threading.Lock()
        # Whether another live worker process owns a container found for an execution (the worker
        # sets it: worker.faults.contested); then start() raises ExecutionOwnedElsewhere.
        self.owner_alive: OwnerCheck | None = None
        self._oom = OomWatcher(self.client, executor_id)

    # -- seed API -------------------------------------------------------------
    def is_installed(self) -> bool:
        """Whether the Docker daemon answers; never raises."""
        return self.client.ping()

    def answered_within(self, seconds: float) -> bool:
        """Whether the daemon answered one of this executor's requests in the last
        ``seconds`` (no request is made: a cheap stand-in for a fresh is_installed)."""
        return self.client.answered_within(seconds)

    def start(
        self, request: ExecutionRequest | dict[str, Any], *, progress: ProgressCallback | None = None,
        files: ExecutionFiles | None = None,
    ) -> None:
        """Start an execution; returns once its container runs.

        ``progress`` gets the image pull's PullProgress (layers, bytes) from the pulling
        thread, at most every ``pull.PROGRESS_INTERVAL`` seconds and once at its end.

        ``files`` moves files in and out (``files.ExecutionFiles``): the input archive
        ``request.inputs`` announces goes into the container after create and before
        start (a bad one ends the execution ``rejected``, error code ``invalid_inputs``),
        and ``request.outputs`` are collected into its sink once the container has ended.

        Raises RequestRejected (nothing recorded), ExecutionAlreadyStarted,
        ExecutionAlreadyFinished, ExecutionOwnedElsewhere (its container exists or is being
        created, and ``owner_alive`` says another live worker owns it: nothing recorded, the
        container untouched), or a StartError, whatever its cause (GPU device
        nodes missing, pull, create, the daemon, anything unexpected: StartFailed):
        then the execution is recorded as finished with status ``error`` and its
        code, so ``wait`` still returns its result.
        """
        request = self._validate(request)
        refused: StartError | None = None
        try:
            spec = build_container_spec(request, self.executor_id, self.policy)
        except StartError as exc:  # e.g. GPU device nodes missing: recorded like any start error
            spec, refused = None, exc
        if spec is not None:
            for key, value in self.labels.items():
                spec.labels.setdefault(key, value)  # the same dict the create call sends
        self._prune_expired()
        with self._lock:
            existing = self._handlers.get(request.execution_id)
            if existing is not None:
                if existing.finished:
                    raise ExecutionAlreadyFinished(f"execution {request.execution_id} has already finished")
                raise ExecutionAlreadyStarted(f"execution {request.execution_id} is already started")
            handler = ExecutionHandler(
                request, self.client, grace=self.stop_grace_seconds, keep=self.keep_containers, oom=self._oom,
                progress=progress, files=files, owner_alive=self.owner_alive,
            )
            self._handlers[request.execution_id] = handler
        if refused is not None:
            handler.refuse(refused)
            raise refused
        assert spec is not None
        try:
            handler.launch(spec)
        except ExecutionOwnedElsewhere:  # another live worker runs it: nothing recorded here
            with self._lock:
                if self._handlers.get(request.execution_id) is handler:
                    del self._handlers[request.execution_id]
            raise

    def wait(self, execution_id: str) -> Future[ExecutionResult]:
        """A future of the result. Each caller gets its own future: cancelling it
        stops that wait only, never the execution or other waiters."""
        future: Future[ExecutionResult] = Future()
        try:
            handler = self._get(execution_id)
        except ExecutionNotFound as exc:
            future.set_exception(exc)
            return future

        def relay(done: Future[ExecutionResult]) -> None:
            try:
                future.set_result(done.result())
            except InvalidStateError:  # this waiter cancelled its future
                pass

        handler.done.add_done_callback(relay)
        return future

    def cancel(self, execution_id: str, grace_seconds: float | None = None) -> None:
        """Stop an execution: SIGTERM, the grace period, then SIGKILL. Returns at once;
        ``wait`` gives the ``cancelled`` result."""
        self._get(execution_id).cancel(grace_seconds)

    def get_log_stream(self, request: LogStreamRequest) -> LogStream:
        return LogStream(self._get(request.execution_id).output, tail=request.tail, follow=request.follow)

    def run(self, request: ExecutionRequest | dict[str, Any], timeout: float | None = None) -> ExecutionResult:
        """Start and wait. If ``timeout`` passes first the execution is cancelled (and
        its container gone) before TimeoutError is raised."""
        request = self._validate(request)
        self.start(request)
        future = self.wait(request.execution_id)
        try:
            return future.result(timeout)
        except FutureTimeout:
            try:
                self.cancel(request.execution_id)
            except ExecutionAlreadyFinished:
                return future.result()
            self.wait(request.execution_id).result(max(self.stop_grace_seconds, request.stop_timeout or 0) + 60)
            raise TimeoutError(f"execution {request.execution_id} did not finish within {timeout:g} s") from None

    def cleanup(self) -> CleanupReport:
        """Remove every container, network and volume labelled with this executor's
        id and forget all execution state. Raises CleanupError naming what remains."""
        with self._lock:
            handlers = list(self._handlers.values())
            self._handlers.clear()
        for handler in handlers:
            if not handler.finished:
                try:
                    handler.cancel(0)
                except ExecutionAlreadyFinished:
                    pass
        # Let in-flight handlers finish their own removal, so the sweep below does
        # not race them and nothing labelled is left when cleanup returns.
        futures_wait([h.done for h in handlers], timeout=self.stop_grace_seconds + 30)
        report = CleanupReport()
        try:
            report.containers, report.networks, report.volumes, report.errors = self.client.remove_labelled(
                self.executor_id
            )
        except DAEMON_ERRORS as exc:
            report.errors.append(f"listing resources failed: {exc}")
        if report.errors:
            raise CleanupError(report)
        return report

    # -- beyond the seed --------------------------------------------------------
    def info(self, execution_id: str) -> ExecutionInfo:
        h = self._get(execution_id)
        return ExecutionInfo(
            execution_id, h.state, h.container_id, h.adopted, h.started_at, h.finished_at, h.pull_seconds
        )

    def forget(self, execution_id: str) -> None:
        """Drop a finished execution's result and logs now (the worker does this
        once the outcome is in Redis). A running execution is not forgotten."""
        with self._lock:
            handler = self._handlers.get(execution_id)
            if handler is not None and handler.finished:
                del self._handlers[execution_id]

    def executions(self) -> list[str]:
        with self._lock:
            return list(self._handlers)

    # -- the containers dockrq owns on this daemon (reaper, adoption) ------------------
    def owned_containers(self, execution_id: str | None = None) -> list[OwnedContainer]:
        """Every container on this daemon labelled ``dockrq.execution`` (of any executor id: nodes
        may share a daemon), or only ``execution_id``'s. Raises one of DAEMON_ERRORS."""
        return owned_containers(self.client, execution_id)

    def remove_container(
        self, container: OwnedContainer, grace: float | None = None, max_grace: float | None = None
    ) -> None:
        """Remove a container (and its anonymous volumes); docker rm -f. When ``grace`` (seconds) is
        given a running one is first stopped (docker stop: SIGTERM, the grace, SIGKILL): with its own
        stop timeout if it has one (``Config.StopTimeout``, from the request's ``stop_timeout``, i.e.
        docker run --stop-timeout), at most ``max_grace`` seconds (None: no bound), else ``grace``.
        A container already gone is fine. Raises one of DAEMON_ERRORS."""
        if grace is not None and container.state == "running":
            own = self._stop_timeout(container.id)
            if own is not None:
                grace = own if max_grace is None else min(own, max_grace)
            self.client.stop(container.id, grace)
        self.client.remove(container.id)

    def _stop_timeout(self, container_id: str) -> int | None:
        """The container's ``Config.StopTimeout`` (docker run --stop-timeout); None if unset or gone."""
        try:
            value = self.client.inspect(container_id)["Config"].get("StopTimeout")
        except NotFound:
            return None
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def close(self) -> None:
        self._oom.close()
        self.client.close()

    # -- internals ----------------------------------------------------------------
    def _get(self, execution_id: str) -> ExecutionHandler:
        with self._lock:
            handler = self._handlers.get(execution_id)
        if handler is None:
            raise ExecutionNotFound(f"execution {execution_id} is not known to executor {self.executor_id}")
        return handler

    @staticmethod
    def _validate(request: ExecutionRequest | dict[str, Any]) -> ExecutionRequest:
        if isinstance(request, ExecutionRequest):
            return request
        try:
            return ExecutionRequest.model_validate(request)
        except ValidationError as exc:
            raise RequestRejected(describe_validation_error(exc)) from exc

    def _prune_expired(self) -> None:
        cutoff = time.monotonic() - self.retention_seconds
        with self._lock:
            expired = [
                eid for eid, h in self._handlers.items() if h.finished_monotonic is not None and h.finished_monotonic < cutoff
            ]
            for eid in expired:
                del self._handlers[eid]


def new_executor(executor_id: str, **options: Any) -> DockerExecutor:
    """NewExecutor: raises DockerUnavailableError when no Docker client can be made."""
    try:
        return DockerExecutor(executor_id, **options)
    except DockerUnavailableError:
        raise
    except DAEMON_ERRORS as exc:
        raise DockerUnavailableError(f"cannot create a Docker client: {exc}") from exc
