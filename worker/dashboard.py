"""``rq-dashboard --json --config worker.dashboard``: the path operators and docker-compose.yml
give rq-dashboard; importing it applies ``worker.service.dashboard``."""

from worker.service.dashboard import DashboardWorker, serialize_current_job

__all__ = ["DashboardWorker", "serialize_current_job"]
