"""``worker.rq_job.DockrqJob``: the job class by the path plain ``rq worker --job-class`` is given
(README); it lives in ``worker.service.job``."""

from worker.service.job import DockrqJob

__all__ = ["DockrqJob"]
