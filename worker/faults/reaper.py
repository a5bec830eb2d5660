"""The reaper: every worker finishes what dead workers left behind.

Each dockrq worker runs one reaper thread (every ``reap_interval_seconds``, and
once at start-up, before rq's own registry maintenance). A pass runs six sweeps,
each its own unit:

1. ``worker.faults.dead_workers``: started jobs of dead workers, adopted, settled,
   re-enqueued or ended ``lost``;
2. ``worker.faults.dequeued``: jobs taken off the queue by a worker that died
   before starting them, put back;
3. ``worker.faults.failed``: jobs rq failed without an outcome, ended ``lost``;
4. ``worker.faults.orphans``: labelled containers on this daemon nobody owns, removed;
5. ``worker.faults.dependents``: deferred dependents whose dependencies have decided,
   ended ``dependency_failed`` or released;
6. ``worker.faults.forgotten``: this deployment's containers whose executions Redis
   no longer knows (data lost or expired), removed; another deployment's never.

Sweeps 1-3 and 5 look at the worker's queues; 4 and 6 (and the container side of 1) only
while this worker's Docker daemon answers. Shared tools (reap lock, lost
outcomes, container removal, the report) are in ``worker.faults.sweep``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from schemas.connections import REDIS_DOWN
from worker.executor import DAEMON_ERRORS, DockerExecutor, DockerUnavailableError
from worker.faults.adoption import Adoptions
from worker.faults.dead_workers import DeadWorkersSweep
from worker.faults.dependents import DeferredDependentsSweep
from worker.faults.dequeued import DequeuedJobsSweep
from worker.faults.failed import FailedJobsSweep
from worker.faults.forgotten import ForgottenContainersSweep
from worker.faults.liveness import Liveness, rq_heartbeat_ttl
from worker.faults.orphans import OrphanContainersSweep
from worker.faults.sweep import Pass, ReapReport, SweepContext
from worker.observe import metrics

if TYPE_CHECKING:
    from worker.service.runtime import WorkerRuntime
    from worker.service.worker import DockrqWorker

__all__ = ["ReapReport", "Reaper"]

log = logging.getLogger(__name__)


class Reaper:
    """One worker's reaper: ``start()`` its thread, ``run_once()`` a pass, ``stop()``."""

    def __init__(self, worker: DockrqWorker, runtime: WorkerRuntime) -> None:
        s = runtime.settings
        self.worker = worker
        self.runtime = runtime
        self.settings = s
        self.connection: redis.Redis = worker.connection
        self.rq_ttl = rq_heartbeat_ttl(s)
        self.liveness = Liveness(self.connection, reap_after=s.reap_after_seconds, worker_name=worker.name)
        self.adoptions = Adoptions(worker, runtime, self.rq_ttl)
        ctx = SweepContext(worker, runtime, self.liveness, self.adoptions)
        self.dead_workers = DeadWorkersSweep(ctx)
        self.dequeued = DequeuedJobsSweep(ctx)
        self.failed = FailedJobsSweep(ctx)
        self.orphans = OrphanContainersSweep(ctx)
        self.dependents = DeferredDependentsSweep(ctx)
        self.forgotten = ForgottenContainersSweep(ctx)
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
        except REDIS_DOWN as exc:
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
        metrics.reaped(report)
        if report:
            log.info("reaper: %s", report)
        return report

    # -- one pass -------------------------------------------------------------------

    def _pass(self) -> ReapReport:
        p = Pass(self._clock, self._docker(), ReapReport())
        for queue in self.worker.queues:
            self.dead_workers.run(queue, p)
            self.dequeued.run(queue, p)
            self.failed.run(queue, p)
            self.dependents.run(queue, p)
        self.orphans.run(p)
        self.forgotten.run(p)
        return p.report

    def _clock(self) -> tuple[float, float]:
        """Redis's time and how long Redis has been up (see worker.faults.liveness)."""
        if self._connected_since is None:
            self._connected_since = time.monotonic()
        try:
            return self.liveness.clock()
        except redis.ResponseError:  # INFO not allowed for this ACL user: count our own connected time
            seconds, micros = self.connection.time()
            return seconds + micros / 1e6, time.monotonic() - self._connected_since

    def _docker(self) -> DockerExecutor | None:
        """The executor, while its daemon answers (a test double without containers counts as no daemon)."""
        try:
            executor = self.runtime.executor
        except DockerUnavailableError:
            return None
        if not hasattr(executor, "owned_containers") or not executor.is_installed():
            return None
        return executor
