"""``worker.rq_worker.DockrqWorker``: the worker class by the path plain ``rq worker -w`` is given
(README); it lives in ``worker.service.worker``."""

from worker.service.worker import DockrqWorker

__all__ = ["DockrqWorker"]
