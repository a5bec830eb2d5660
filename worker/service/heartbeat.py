"""The worker's heartbeat thread: the worker visibly alive for as long as its process lives.

Every ``heartbeat_seconds``, busy or idle, it refreshes the rq worker hash (or,
while an execution runs, the current job's started entry as rq's monitoring
parent would) and the started entries of adopted executions. A worker is judged
dead only when its process is (``worker.faults.liveness``), never because its
main thread was busy stopping a container or writing an outcome.

Idle (no execution of its own, none adopted) it heartbeats only every
``idle_interval`` (DOCKRQ_IDLE_HEARTBEAT_SECONDS), counting rq's own heartbeats
(``worker.service.bookkeeping``): nothing judges an idle worker by its heartbeat,
and taking a job heartbeats at once.

Every ``idle_interval`` at least it also checks that Redis still has the worker
registered (``worker.service.registration``): in the idle beat's own round trip,
in one of its own otherwise (rq's busy heartbeat pipeline, or no beat due).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from schemas.connections import REDIS_DOWN

if TYPE_CHECKING:
    from worker.faults.adoption import Adoptions
    from worker.service.worker import DockrqWorker

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats every ``interval`` seconds until :meth:`stop`; a Redis outage is logged once, then ridden out."""

    def __init__(self, worker: DockrqWorker, adoptions: Adoptions, interval: float, idle_interval: float | None = None) -> None:
        super().__init__(name="dockrq-heartbeat", daemon=True)
        self.worker = worker
        self.adoptions = adoptions
        self.interval = interval
        self.idle_interval = interval if idle_interval is None else max(interval, idle_interval)
        self._halt = threading.Event()

    def run(self) -> None:
        failing = False
        while not self._halt.wait(self.interval):
            try:
                if self.worker.executions:
                    self.worker.heartbeat_current_job()
                elif self.adoptions.active() or self.worker.beat_is_older_than(self.idle_interval - self.interval / 2):
                    self.worker.heartbeat(raise_errors=True, check_registration=True)
                if self.worker.registration is not None:  # when no beat above checked it (busy: rq's pipeline)
                    self.worker.registration.check_if_due()
                self.adoptions.keep_alive()
                failing = False
            except REDIS_DOWN as exc:
                if not failing:
                    log.warning("heartbeat: Redis unreachable (%s); still trying", exc)
                failing = True
            except Exception:  # noqa: BLE001 - the heartbeat must keep going
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
