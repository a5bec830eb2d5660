"""What lives as long as the worker process: settings, one executor, one control subscription.

rq calls the job function once per execution; creating a Docker client, a
Redis subscription and threads on every call would dominate the cost of short
containers. The runtime holds them instead. The ``dockrq-worker`` process
installs one at start; under a plain ``rq worker`` the job function builds one
from the environment on first use (once per work horse).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

import redis

from schemas import CANCEL_MESSAGE, Keys, Outcome
from schemas.connections import REDIS_DOWN, client_from_url
from worker.executor import ExecutorError, new_executor

from worker.execution.channels import ExecutionChannels
from worker.execution.replicated import ReplicaAcks
from worker.config.deployment import LABEL_DEPLOYMENT
from worker.config.settings import WorkerSettings
from worker.faults.owner import owner_labels
from worker.observe import metrics

if TYPE_CHECKING:
    from rq.job import Job

    from worker.executor import DockerExecutor

log = logging.getLogger(__name__)


def build_executor(settings: WorkerSettings) -> DockerExecutor:
    """The Docker executor of a worker with ``settings``: its executor id, the executor's part of
    its policy (mounts, network), its stop grace, its pull timeout, and the deployment label on every
    container (``dockrq.deployment``, worker.config.deployment) with this process's owner labels
    (``dockrq.host``, ``dockrq.pid``, ``dockrq.pid_ns``: worker.faults.owner). Raises DockerUnavailableError."""
    return new_executor(
        settings.executor_id, policy=settings.policy.executor_policy, stop_grace_seconds=settings.stop_grace_seconds,
        pull_timeout_seconds=settings.pull_timeout_seconds, labels={LABEL_DEPLOYMENT: settings.deployment_id, **owner_labels()},
    )


class Cancellable(Protocol):
    execution_id: str

    def cancel(self, reason: str) -> None: ...

    def stop_by_rq(self) -> None: ...


class WorkerHooks(Protocol):
    """What the runtime needs from the rq worker running it (see rq_worker.DockrqWorker)."""

    def heartbeat_current_job(self) -> None: ...


class ControlListener:
    """One pattern subscription to every ``P:exec:*:control`` topic of this prefix.

    Subscribing once per process (instead of once per execution) costs no round
    trip per execution and leaves no window in which a cancel is missed: the
    subscription exists before any execution starts. Messages for executions
    this process does not run are ignored.
    """

    # How long the listener thread blocks per read: bounds how long close() takes.
    poll_seconds = 0.25

    def __init__(self, connection: redis.Redis, keys: Keys, on_cancel: Callable[[str], None]) -> None:
        self._on_cancel = on_cancel
        self._prefix, self._suffix = keys.control_channel("\0").split("\0")
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(**{keys.control_channel("*"): self._on_message})
        self._thread = self._pubsub.run_in_thread(
            sleep_time=self.poll_seconds, daemon=True, exception_handler=self._on_error
        )

    def _on_message(self, message: dict[str, Any]) -> None:
        channel, data = message["channel"], message["data"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        data = data.decode(errors="replace") if isinstance(data, bytes) else data
        if data.strip() != CANCEL_MESSAGE:
            log.warning("ignoring unknown control message %r on %s", data[:64], channel)
            return
        self._on_cancel(channel[len(self._prefix) : len(channel) - len(self._suffix)])

    @staticmethod
    def _on_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
        # Same policy as rq's own command listener: ride out Redis outages, the
        # client re-subscribes when the connection comes back.
        if isinstance(exc, REDIS_DOWN):
            log.error("control subscription lost (%s); retrying in 2 s", exc)
            time.sleep(2.0)
            return
        raise exc

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=2)
        self._pubsub.close()


class WorkerRuntime:
    """Per-process state shared by every execution this process runs."""

    # How often a waiting execution refreshes rq's heartbeats and re-reads its cancel flag
    # (settings.heartbeat_seconds).
    heartbeat_interval: float

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        executor: DockerExecutor | None = None,
        connection: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.heartbeat_interval = settings.heartbeat_seconds
        self.keys = Keys(settings.prefix)
        self.acks = ReplicaAcks(
            settings.replica_acks, settings.replica_ack_timeout_seconds, marker_key=self.keys.replication_marker
        )
        self.worker: WorkerHooks | None = None
        self._executor = executor
        self._connection = connection
        self._control: ControlListener | None = None
        self._running: dict[str, Cancellable] = {}
        # Outcomes an execution produced while Redis stayed away past its retry budget;
        # the worker writes them once Redis is back (worker.faults.outage).
        self._unwritten: dict[str, Outcome] = {}
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None

    # -- shared resources ----------------------------------------------------

    @property
    def executor(self) -> DockerExecutor:
        """The process's one executor, made on first use. Raises DockerUnavailableError."""
        with self._lock:
            if self._executor is None:
                self._executor = build_executor(self.settings)
            return self._executor

    @property
    def connection(self) -> redis.Redis:
        """Redis for executions not run by rq (direct calls); rq jobs use their own connection."""
        with self._lock:
            if self._connection is None:
                self._connection = client_from_url(self.settings.redis_url)
            return self._connection

    def submit(self, fn: Any, *args: Any) -> Any:
        """Run a blocking call (e.g. a pull) off the main thread so rq's signals,
        timeouts and heartbeats keep working while it runs."""
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dockrq-start")
        return self._threads.submit(fn, *args)

    def channels(self, execution_id: str, job: Job | None, *, worker: str | None = None) -> ExecutionChannels:
        """The execution's Redis channels, on the rq job's connection (else the runtime's), written in
        the name of ``worker`` (default: the job's worker, else this node's executor id)."""
        s = self.settings
        return ExecutionChannels(
            job.connection if job is not None else self.connection,
            self.keys,
            execution_id,
            worker=worker or (job.worker_name if job is not None else None) or s.executor_id,
            retention_seconds=s.retention_seconds,
            log_stream_maxlen=s.log_stream_maxlen,
            job=job,
            outcome_retry_seconds=s.outcome_retry_seconds,
            log_retention_seconds=s.log_retention_seconds,
            acks=self.acks,
        )

    # -- running executions --------------------------------------------------

    @contextmanager
    def track(self, run: Cancellable, connection: redis.Redis) -> Iterator[None]:
        """Make ``run`` reachable by control messages and rq's stop-job while inside."""
        with self._lock:
            if self._control is None:
                self._control = ControlListener(connection, self.keys, self._cancel_from_control)
            self._running[run.execution_id] = run
        try:
            with metrics.running():
                yield
        finally:
            with self._lock:
                self._running.pop(run.execution_id, None)

    def cancel(self, execution_id: str, reason: str) -> bool:
        """Cancel an execution this process runs; False if it runs none by that id."""
        with self._lock:
            run = self._running.get(execution_id)
        if run is None:
            return False
        run.cancel(reason)
        return True

    def stop_by_rq(self, execution_id: str) -> bool:
        """rq's stop-job / stop-execution command for an execution this process runs."""
        with self._lock:
            run = self._running.get(execution_id)
        if run is None:
            return False
        run.stop_by_rq()
        return True

    def keep_unwritten(self, outcome: Outcome) -> None:
        """An execution ended while Redis stayed away past its retry budget: its outcome
        waits here, in this process, for ``write_unwritten`` once Redis is back."""
        with self._lock:
            self._unwritten[outcome.execution_id] = outcome

    def take_unwritten(self, execution_id: str) -> Outcome | None:
        with self._lock:
            return self._unwritten.pop(execution_id, None)

    def write_unwritten(self, job: Job) -> Outcome | None:
        """Write the outcome ``job``'s execution left with ``keep_unwritten``, if any (first
        writer wins, as always). Called wherever rq settles such a job, so its failure is
        never all that is left of it. While Redis is still away it raises, keeping the outcome."""
        outcome = self.take_unwritten(job.id)
        if outcome is None:
            return None
        try:
            self.channels(job.id, job).finish(outcome)
        except BaseException:
            self.keep_unwritten(outcome)
            raise
        log.info("execution %s: %s outcome written after the outage", job.id, outcome.status.value)
        return outcome

    def forget(self, execution_id: str) -> None:
        """Drop a finished execution from the executor, if one was ever made."""
        if self._executor is not None:
            with suppress(ExecutorError):
                self._executor.forget(execution_id)

    def _cancel_from_control(self, execution_id: str) -> None:
        if self.cancel(execution_id, "cancelled by request"):
            log.info("execution %s: cancel requested on the control channel", execution_id)

    def heartbeat(self) -> None:
        """Keep rq from taking a long execution for an abandoned one."""
        if self.worker is not None:
            self.worker.heartbeat_current_job()

    def close(self) -> None:
        with self._lock:
            control, self._control = self._control, None
            threads, self._threads = self._threads, None
        if control is not None:
            control.close()
        if threads is not None:
            threads.shutdown(wait=False)


_current: WorkerRuntime | None = None
_current_lock = threading.Lock()


def install(runtime: WorkerRuntime) -> WorkerRuntime:
    """Make ``runtime`` the one the job function uses in this process."""
    global _current
    with _current_lock:
        _current = runtime
    return runtime


def current() -> WorkerRuntime:
    """The installed runtime, or one built from the environment (plain ``rq worker``)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = WorkerRuntime(WorkerSettings.load())
        return _current
