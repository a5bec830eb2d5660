"""The dashboard's pages and JSON for an id without an rq job (rq-dashboard 0.9 answers 500).

rq-dashboard's job page (``/<n>/view/job/<id>``) and its data (``/<n>/data/job/<id>.json``)
fetch the rq job and raise rq's ``NoSuchJobError`` when it is gone: after the dashboard's
own Delete of an ended execution (its outcome is kept for the retention), and for any
unknown id. ``worker.observe.dashboard_views`` routes both through here:

* an execution whose rq job is gone but whose outcome ``P:exec:ID:outcome`` is kept: the
  same page, filled from what the dashboard's Delete kept of it (``P:exec:ID:dashboard``,
  below) or, failing that (the job was deleted some other way), from the outcome alone:
  status, exit code, error, image (its digest), container, durations; its output is then
  not shown, since the request's environment values it would be masked with went with the
  rq job;
* an id with neither: a 404 page, and 404 with ``{"status": "ERROR", "message"}`` from the
  JSON endpoints (job data, delete, requeue, cancel).

``P:exec:ID:dashboard`` (string, JSON): written by the dashboard's Delete just before it
deletes an ended execution's rq job: the job's data as the job page showed it (rq's fields,
and ``dockrq`` with its output tail already masked), expiring with the outcome.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Any

import redis
from flask import current_app, jsonify, make_response, render_template, url_for
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_dashboard import web

from schemas import Outcome
from worker.observe import dashboard_data as data
from worker.observe.dashboard_data import BADGES, DashboardSettings

DELETED_DESCRIPTION = "(rq job deleted; the outcome is kept for the retention)"
OUTPUT_NOT_SHOWN = "(not shown: the rq job, which held the environment values to hide in it, was deleted; `dockrq logs ID` prints it)"


def view_key(settings: DashboardSettings, execution_id: str) -> str:
    """``P:exec:ID:dashboard``: what the dashboard's Delete kept of an execution's page."""
    return settings.keys.dashboard_view(execution_id)


def keep_view(connection: redis.Redis, settings: DashboardSettings, job: Job, info: dict[str, Any]) -> None:
    """Before the dashboard deletes ``job`` (an ended execution): keep ``info`` (its job data,
    as ``job_info`` answers it, secrets masked) until its outcome expires. Best effort: an ACL
    user that cannot write it leaves the page to be built from the outcome alone."""
    key = settings.keys.outcome(job.id)
    try:
        ttl_ms = int(connection.pttl(key))
        if ttl_ms == -2:  # no outcome: nothing will show the page
            return
        kept = {**info, "description": DELETED_DESCRIPTION, "status": "deleted"}
        connection.set(view_key(settings, job.id), json.dumps(kept, default=str), px=ttl_ms if ttl_ms > 0 else None)
    except redis.ResponseError:
        return


def gone_info(connection: redis.Redis, settings: DashboardSettings, execution_id: str) -> dict[str, Any] | None:
    """The job data (rq-dashboard's ``job_info`` shape plus ``dockrq``) of an execution whose
    rq job is gone, or None when neither its kept page nor its outcome exists."""
    try:
        kept = connection.get(view_key(settings, execution_id))
    except redis.ResponseError:
        kept = None
    if kept:
        return json.loads(kept)
    outcome = data.read_outcome(connection, settings, execution_id)
    if outcome is None:
        return None
    return from_outcome(outcome)


def from_outcome(outcome: Outcome) -> dict[str, Any]:
    """The job page's data from an outcome alone (no rq job, no job meta, no request)."""
    result = outcome.result
    status = outcome.status.value
    code = outcome.error.code if outcome.error else None
    started = result.started_at if result else None
    finished = result.finished_at if result else None
    run = (finished - started).total_seconds() if started and finished else None
    when = web.serialize_date(_utc(started or finished)) if (started or finished) else None
    dockrq = {
        "status": status, "label": data.label(status, outcome.exit_code, code), "badge": BADGES.get(status, "badge-light"),
        "ended": True, "exit_code": outcome.exit_code, "error_code": code,
        "image": (result.image_digest or result.image_id) if result else None, "worker": None,
        "can_cancel": False, "can_requeue": False, "execution_id": outcome.execution_id, "node": None,
        "container_id": result.container_id if result else None, "oom_killed": bool(result and result.oom_killed),
        "error_message": outcome.error.message if outcome.error else None,
        "durations": {
            "queued": result.queued_seconds if result else None, "pull": result.pull_seconds if result else None, "run": run,
        },
        "stdout": OUTPUT_NOT_SHOWN if result and result.stdout else "",
        "stderr": OUTPUT_NOT_SHOWN if result and result.stderr else "",
        "stdout_truncated": False, "stderr_truncated": False,
    }
    return {
        "id": outcome.execution_id, "created_at": when, "enqueued_at": None, "started_at": when,
        "ended_at": web.serialize_date(_utc(finished)) if finished else when, "origin": None, "status": "deleted",
        "result": None, "exc_info": None, "description": DELETED_DESCRIPTION, "metadata": "{}", "dockrq": dockrq,
    }


def not_found_json(job_id: str) -> Any:
    """404 from a JSON endpoint: no rq job and no outcome with this id."""
    body = {"status": "ERROR", "message": f"no rq job and no dockrq execution {job_id}"}
    return jsonify(**body), 404, {"Cache-Control": "no-store"}


def job_page(instance_number: int, job_id: str, settings: DashboardSettings) -> Any:
    """rq-dashboard's job page for an id without an rq job: the page (filled in from
    ``gone_info`` by its scripts) when the execution's outcome or kept page exists, else 404."""
    found = gone_info(current_app.redis_conn, settings, job_id) is not None
    response = make_response(
        render_template(
            "rq_dashboard/job.html" if found else "rq_dashboard/dockrq_not_found.html",
            current_instance=instance_number,
            instance_list=web.escape_format_instance_list(current_app.config.get("RQ_DASHBOARD_REDIS_URL")),
            id=job_id,
            rq_url_prefix=url_for(".queues_overview"),
            rq_dashboard_version=web.rq_dashboard_version,
            rq_version=web.rq_version,
            deprecation_options_usage=current_app.config.get("DEPRECATED_OPTIONS", False),
            enable_delete=not current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"),
        ),
        200 if found else 404,
    )
    response.headers.set("Cache-Control", "no-store")
    return response


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class NoSuchExecution(LookupError):
    """Raised by a JSON view for an id with neither an rq job nor an outcome: ``json_view`` answers 404."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def json_view(view: Any) -> Any:
    """rq-dashboard's ``jsonify`` decorator, answering 404 (``not_found_json``) when the view
    raises NoSuchExecution or rq's NoSuchJobError (rq-dashboard's own views would answer 500)."""
    wrapped = web.jsonify(view)

    @functools.wraps(view)
    def answer(*args: Any, **kwargs: Any) -> Any:
        try:
            return wrapped(*args, **kwargs)
        except NoSuchExecution as exc:
            return not_found_json(exc.job_id)
        except NoSuchJobError:
            return not_found_json(str(kwargs.get("job_id", "")))

    return answer
