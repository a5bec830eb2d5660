"""``dockrq-worker run --pool N``: rq's WorkerPool, its members named as single workers are.

rq's ``WorkerPool.start_worker`` names each member ``uuid4().hex``, so ``rq info``, the
dashboard and logs cannot tell which host a pool member runs on. dockrq names every
worker ``<executor id>.<pid>.<random>`` (``worker_name``); a pool member is the pool's
name plus ``-<n>``: ``<executor id>.<pool pid>.<random>-<n>``, n counting from 1 in the
order rq starts members (a member rq respawns after one died takes the next n, so no
name is used twice by one pool; the random part keeps them apart across restarts and hosts).
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from rq.worker_pool import WorkerData, WorkerPool

from worker.service.job import dockrq_job_class


def worker_name(executor_id: str) -> str:
    """``<executor id>.<pid>.<6 hex>``: a worker's rq name, unique across hosts (the executor
    id names the host), processes and restarts (the pid and the random part)."""
    return f"{executor_id}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


class DockrqWorkerPool(WorkerPool):
    """rq's WorkerPool whose members are named ``<name>-<n>`` (see the module's docstring)
    and run ``DockrqJob`` (``worker.service.job.dockrq_job_class``), not rq's default ``Job``.

    ``name``: the pool's name (``worker_name`` by default, or ``--name``); rq's own
    ``WorkerPool.name`` (in its log lines) is set to it too."""

    def __init__(self, *args: Any, name: str, **kwargs: Any) -> None:
        # rq's WorkerPool defaults job_class to rq's Job and hands it to every member.
        kwargs["job_class"] = dockrq_job_class(kwargs.get("job_class"))
        super().__init__(*args, **kwargs)
        self.name = name
        self._members = itertools.count(1)

    def member_name(self) -> str:
        """The next member's rq worker name."""
        return f"{self.name}-{next(self._members)}"

    def start_worker(
        self, count: int | None = None, burst: bool = True, _sleep: float = 0, logging_level: str = "INFO"
    ) -> None:
        """rq's ``WorkerPool.start_worker`` (rq 3.0), with ``member_name`` instead of ``uuid4().hex``."""
        name = self.member_name()
        process = self.get_worker_process(name, burst=burst, _sleep=_sleep, logging_level=logging_level)
        process.start()
        self.worker_dict[name] = WorkerData(name=name, pid=process.pid, process=process)  # type: ignore[arg-type]
        self.log.debug("Spawned worker: %s with PID %d", name, process.pid)
