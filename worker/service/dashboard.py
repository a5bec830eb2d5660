"""rq-dashboard configuration for dockrq: ``rq-dashboard --json --config worker.dashboard``.

rq-dashboard 0.9 honours ``--json`` for queues and jobs but not for workers:
its workers page reads each busy worker's current job with pickle and answers
500 for as long as any dockrq worker is busy (or died busy), and it would show
the job's call string, whose arguments carry environment values. Importing this
module (rq-dashboard imports its ``--config`` module before serving) makes that
page read workers with the configured serializer and show the job's
description (the producer's ``docker run`` line, env values hidden) instead.
"""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_dashboard import web

from schemas.connections import client_from_url


class DashboardWorker(Worker):
    """rq's Worker as the dashboard lists it: serializer from ``--json``, gone jobs shown as idle."""

    @classmethod
    def all(cls, *args: Any, serializer: Any = None, **kwargs: Any) -> list[Any]:
        return super().all(*args, serializer=serializer or web.config.serializer, **kwargs)

    def get_current_job(self) -> Job | None:
        try:
            return super().get_current_job()
        except NoSuchJobError:  # a worker that died busy, whose job has expired since
            return None
        except KeyError:  # rq reads its execution record, expired a moment before the worker's index of it
            return None


def serialize_current_job(job: Job | None) -> Any:
    if job is None:
        return "idle"
    return {
        "job_id": job.id,
        "description": job.description,
        "created_at": web.serialize_date(job.created_at),
        "call_string": job.description,  # never the arguments
    }


web.Worker = DashboardWorker
web.serialize_current_job = serialize_current_job


def _connect(url: str, **_options: Any) -> tuple[None, Any]:
    """rq-dashboard's Redis factory (``redis_sentinel_url.connect``), replaced by dockrq's own
    (``schemas.connections.client_from_url``), so the dashboard reads ``DOCKRQ_REDIS_URL`` exactly
    as workers and the CLI do: a ``redis+sentinel://`` URL's user too, the same options and Retry."""
    return None, client_from_url(url)


web.from_url = _connect

# Job lists, counts and pages that tell executions' endings apart, safe buttons (worker/observe/dashboard_views.py).
from worker.observe import dashboard_views  # noqa: E402,F401 - registers on import, before rq-dashboard registers its blueprint
