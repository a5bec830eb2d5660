"""dockrq's extensions of rq-dashboard 0.9, through its own extension points (no fork).

rq-dashboard is a Flask blueprint (``rq_dashboard.web.blueprint``) whose pages are
Jinja templates filled in the browser from JSON endpoints. Imported by
``worker.service.dashboard`` (through ``worker.dashboard``, the ``--config`` module
rq-dashboard imports before it registers the blueprint), this module:

* adds ``dockrq`` fields to the JSON the pages already load (a job's row and page,
  a queue's counts) by wrapping the module-level helpers the views call
  (``serialize_job``, ``serialize_queues``, ``get_queue_registry_jobs_count``);
* serves the pseudo-registries ``ended`` and one per outcome status from the status index
  ``P:ended:QUEUE:STATUS``, each under the status's name but ``failed``, whose list is
  ``failed-outcome`` (``/view/jobs/<queue>/failed-outcome/...``): rq-dashboard's ``failed`` stays
  rq's FailedJobRegistry (jobs rq itself failed), with its own count, list, Empty and Requeue All;
* puts its templates (``worker/observe/dashboard_templates``) before rq-dashboard's in the
  app's Jinja loader; each one extends the original (reachable as
  ``rq_dashboard_base/...``) and reuses its scripts;
* replaces, on registration (``blueprint.record``), the views whose effect on an
  execution would be unsafe, and adds ``POST /job/<id>/cancel``.

What each button does to an execution (README, Operations):

* **Cancel**: ``Producer.cancel``: queued or scheduled, it never runs (``cancelled``
  outcome, written with rq's cancel in one transaction); running, the container is
  stopped and the worker writes ``cancelled``.
* **Delete**: ended: the rq job record goes, the outcome and log stay for the
  retention (waiters and ``dockrq status`` still answer). Not started: cancelled
  first, then deleted. Running: cancelled; the record stays until the worker has
  written the outcome (answer ``CANCELLING``). **Empty** does the same to each job of the
  list shown: rq's queue or registry (``failed``: rq's FailedJobRegistry), or an outcome list.
* **Requeue** / **Requeue All**: refused for an execution that has an outcome (an
  execution runs at most once: submit a new one) and for any job not in rq's failed
  registry (queued, deferred, scheduled, started: it runs once as it is); other failed rq
  jobs as rq does. A refusal is ``{"status": "ERROR", "message"}`` (HTTP 200), never a 500.

Malformed URLs and impossible buttons answer 4xx with a short message
(``worker.observe.dashboard_errors``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import current_app, redirect, url_for
from jinja2 import ChoiceLoader, FileSystemLoader, PrefixLoader
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq_dashboard import web

from producer import Producer
from producer.errors import ExecutionAlreadyFinished, ExecutionNotFound, ProducerError

from worker.observe import dashboard_data as data
from worker.observe import dashboard_errors as errors
from worker.observe import dashboard_gone as gone
from worker.observe.dashboard_gone import NoSuchExecution
from worker.observe.dashboard_data import PSEUDO_REGISTRIES, STATUSES, DashboardSettings

SETTINGS = DashboardSettings.from_env()
TEMPLATES = Path(__file__).with_name("dashboard_templates")
RQ_DASHBOARD_TEMPLATES = Path(web.__file__).with_name("templates")

_original = {
    name: getattr(web, name) for name in ("get_queue_registry_jobs_count", "serialize_job", "serialize_queues")
}


def _connection() -> Any:
    return current_app.redis_conn


def _fetch(job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=_connection(), serializer=web.config.serializer)
    except NoSuchJobError:
        return None


# -- the JSON the pages load, with dockrq's fields ---------------------------------------------


def serialize_job(job: Job) -> dict[str, Any]:
    row = _original["serialize_job"](job)
    row["dockrq"] = data.row(job, job.connection, SETTINGS)
    return row


def serialize_queues(instance_number: int, queues: list[Queue]) -> list[dict[str, Any]]:
    rows = _original["serialize_queues"](instance_number, queues)
    for row, queue in zip(rows, queues, strict=True):
        counts = data.status_counts(queue.connection, SETTINGS, queue.name)
        row["dockrq"] = {
            "ended_url": _list_url(instance_number, queue.name, data.ALL_ENDED),
            "statuses": [
                {"status": s, "count": counts[s], "badge": data.BADGES[s],
                 "url": _list_url(instance_number, queue.name, data.REGISTRY_OF_STATUS[s])}
                for s in STATUSES
            ],
        }
    return rows


def _list_url(instance_number: int, queue: str, registry: str) -> str:
    return url_for(
        ".jobs_overview", instance_number=instance_number, queue_name=queue, registry_name=registry,
        per_page="8", order="dsc", page="1",
    )


def get_queue_registry_jobs_count(
    queue_name: str, registry_name: str, offset: int, per_page: int, order: str, connection: Any
) -> tuple[int, list[dict[str, Any]]]:
    errors.check_registry(registry_name)
    if registry_name not in PSEUDO_REGISTRIES:
        return _original["get_queue_registry_jobs_count"](queue_name, registry_name, offset, per_page, order, connection)
    total, entries = data.ended_page(
        connection, SETTINGS, queue_name, registry_name, offset, per_page, newest_first=order != "asc"
    )
    jobs = Job.fetch_many([e[0] for e in entries], connection=connection, serializer=web.config.serializer)
    rows = []
    for (execution_id, status, ended), job in zip(entries, jobs, strict=True):
        if job is not None:
            rows.append(web.serialize_job(job))
            continue
        when = web.serialize_date(datetime.fromtimestamp(ended, timezone.utc))
        rows.append({  # the rq job was deleted; its outcome is still there
            "id": execution_id, "created_at": when, "ended_at": when, "exc_info": None,
            "description": "(rq job deleted; the outcome is kept for the retention)",
            "dockrq": {"status": status, "label": status, "badge": data.BADGES[status], "ended": True,
                       "can_cancel": False, "can_requeue": False},
        })
    return total, rows


@gone.json_view
def job_info(instance_number: int, job_id: str) -> dict[str, Any]:
    """rq-dashboard's job data plus ``dockrq``; rq job gone: what is kept of the execution
    (``dashboard_gone.gone_info``); neither: 404."""
    if not Job.exists(job_id, connection=_connection()):
        return _gone_or_404(job_id)
    job = _fetch(job_id)
    if job is None:
        return _gone_or_404(job_id)
    info = errors.rq_job_info(job)
    info["dockrq"] = data.execution(job, _connection(), SETTINGS)
    return info


def _gone_or_404(job_id: str) -> dict[str, Any]:
    info = gone.gone_info(_connection(), SETTINGS, job_id)
    if info is None:
        raise NoSuchExecution(job_id)
    return info


def job_view(instance_number: int, job_id: str) -> Any:
    """An execution's page; its rq job deleted, from what is kept of it; an unknown id: 404."""
    try:
        return web.job_view(instance_number, job_id)
    except NoSuchJobError:
        return gone.job_page(instance_number, job_id, SETTINGS)


# -- pages ---------------------------------------------------------------------------------------


def jobs_overview(instance_number: int, queue_name: str | None, registry_name: str, per_page: Any, order: str, page: Any) -> Any:
    """The Jobs tab opens dockrq's queue (DOCKRQ_QUEUE), newest endings first, not rq's empty ``default``."""
    if queue_name is None:
        return redirect(_list_url(instance_number, SETTINGS.queue, data.ALL_ENDED))
    return web.jobs_overview(instance_number, queue_name, registry_name, per_page, order, page)


# -- buttons: a documented, safe effect on executions ---------------------------------------------


def _cancel(job_id: str) -> str:
    """Producer.cancel: "cancelled" (never runs), "signalled" (running: stopping), or "ended"."""
    with Producer(connection=_connection(), prefix=SETTINGS.prefix, retention_seconds=SETTINGS.retention_seconds) as p:
        try:
            return p.cancel(job_id)
        except (ExecutionAlreadyFinished, ExecutionNotFound):
            return "ended"


def _delete(job_id: str) -> dict[str, Any]:
    job = _fetch(job_id)
    if job is None:
        _gone_or_404(job_id)
        return {"status": "OK", "message": f"the rq job of {job_id} is already deleted; its outcome is kept for the retention"}
    if data.is_execution(job) and data.read_outcome(_connection(), SETTINGS, job_id) is None:
        if _cancel(job_id) == "signalled":
            return {"status": "CANCELLING", "message": f"execution {job_id} is being cancelled; delete it once it ended"}
        job = _fetch(job_id)
        if job is None:
            return {"status": "OK"}
    if data.is_execution(job):  # its page stays readable while the outcome is kept
        gone.keep_view(_connection(), SETTINGS, job, _job_data(job))
    job.delete()
    return {"status": "OK"}


def _job_data(job: Job) -> dict[str, Any]:
    info = errors.rq_job_info(job)
    info["dockrq"] = data.execution(job, _connection(), SETTINGS)
    return info


@web.check_delete_enable
@gone.json_view
def delete_job_view(job_id: str, registry: Any = None) -> dict[str, Any]:
    return _delete(job_id)


@gone.json_view
def cancel_job_view(job_id: str) -> dict[str, Any]:
    job = _fetch(job_id)
    if job is None:
        _gone_or_404(job_id)
        return {"status": "OK", "result": "ended"}
    if not data.is_execution(job):
        return {"status": "ERROR", "message": f"{job_id} is not a dockrq execution"}
    try:
        result = _cancel(job_id)
    except ProducerError as exc:
        return {"status": "ERROR", "message": str(exc)}
    return {"status": "OK", "result": result}


def _refuse_requeue(job_id: str) -> str | None:
    job = _fetch(job_id)
    if job is None:
        _gone_or_404(job_id)
        return f"execution {job_id} has ended and runs at most once; submit a new execution to run it again"
    if data.is_execution(job) and data.read_outcome(_connection(), SETTINGS, job_id) is not None:
        return f"execution {job_id} has ended and runs at most once; submit a new execution to run it again"
    if job_id not in job.failed_job_registry:  # rq's requeue is for failed jobs only (InvalidJobOperation)
        status = job.get_status(refresh=False)
        return f"{job_id} is {getattr(status, 'value', status)}: only a failed rq job can be requeued; it runs once as it is"
    return None


@gone.json_view
def requeue_job_view(job_id: str) -> dict[str, Any]:
    refused = _refuse_requeue(job_id)
    if refused:
        return {"status": "ERROR", "message": refused}
    try:
        return web.requeue_job_view.__wrapped__(job_id)
    except InvalidJobOperation as exc:  # it left the failed registry a moment ago
        return {"status": "ERROR", "message": f"{job_id}: {exc}"}


@web.jsonify
def requeue_all(queue_name: str) -> dict[str, Any]:
    queue = Queue(queue_name, serializer=web.config.serializer, connection=_connection())
    errors.check_queue(queue)  # a queue rq has no trace of: 404, as Compact
    registry = queue.failed_job_registry
    requeued = refused = 0
    for job_id in registry.get_job_ids(cleanup=False):
        if not Job.exists(job_id, connection=_connection()):
            continue  # rq's requeue_job would raise NoSuchJobError
        if _refuse_requeue(job_id):
            refused += 1
            continue
        try:
            web.requeue_job(job_id, connection=_connection())
        except (InvalidJobOperation, NoSuchJobError):  # it left the registry a moment ago
            refused += 1
            continue
        requeued += 1
    return {"status": "OK", "count": requeued, "refused": refused}


def _delete_quietly(job_id: str) -> str:
    try:
        return str(_delete(job_id)["status"])
    except NoSuchExecution:  # gone between the listing and now
        return "OK"


@web.check_delete_enable
@web.jsonify
def empty_queue(queue_name: str, registry_name: str) -> dict[str, Any]:
    """Delete (as the Delete button) every job of the list ``registry_name`` names: rq's queue or
    one of rq's registries (``failed`` is rq's FailedJobRegistry), or a pseudo-registry (each
    execution listed within the retention; ``failed-outcome`` for the status ``failed``).
    ``{"status": "OK", "deleted": n, "cancelling": n}``; 404 for an unknown registry or queue."""
    queue = Queue(queue_name, serializer=web.config.serializer, connection=_connection())
    errors.check_registry(registry_name)  # 404
    errors.check_queue(queue)  # 404, as Compact
    registry = None
    if registry_name == "queued":
        job_ids = queue.get_job_ids()
    elif registry_name in PSEUDO_REGISTRIES:
        _, entries = data.ended_page(_connection(), SETTINGS, queue_name, registry_name, 0, 10**9, newest_first=True)
        job_ids = [e[0] for e in entries]
    elif registry_name in ("scheduled", "deferred", "started", "finished", "failed", "canceled"):
        registry = getattr(queue, f"{registry_name}_job_registry")
        job_ids = registry.get_job_ids(cleanup=False)
    else:  # check_registry let it through: a registry added to rq without support here
        return {"status": "ERROR", "message": f"unknown registry {registry_name}"}
    answers = [_delete_quietly(job_id) for job_id in job_ids]
    if registry is not None:  # ids whose job is gone leave the registry too, as rq-dashboard's Empty does
        for job_id in job_ids:
            if not Job.exists(job_id, connection=_connection()):
                registry.remove(job_id)
    return {"status": "OK", "deleted": answers.count("OK"), "cancelling": answers.count("CANCELLING")}


# -- installation ---------------------------------------------------------------------------------

_VIEWS = {
    "jobs_overview": errors.checked_listing(jobs_overview),
    "list_jobs": errors.checked_listing(web.list_jobs),
    "compact_queue": errors.compact_queue,
    "job_view": job_view,
    "job_info": job_info,
    "delete_job_view": delete_job_view,
    "requeue_job_view": requeue_job_view,
    "requeue_all": requeue_all,
    "empty_queue": empty_queue,
}


def _install(state: Any) -> None:
    """On each registration of rq-dashboard's blueprint: dockrq's views and templates first."""
    app = state.app
    for endpoint, view in _VIEWS.items():
        app.view_functions[f"{state.name}.{endpoint}"] = view
    loaders = [FileSystemLoader(str(TEMPLATES)), PrefixLoader({"rq_dashboard_base": FileSystemLoader(str(RQ_DASHBOARD_TEMPLATES))})]
    if app.jinja_loader is not None:
        loaders.append(app.jinja_loader)
    app.jinja_loader = ChoiceLoader(loaders)


def _context() -> dict[str, Any]:
    return {"dockrq_registries": PSEUDO_REGISTRIES, "dockrq_statuses": STATUSES,
            "dockrq_failed_outcome": data.FAILED_OUTCOME, "dockrq_queue": SETTINGS.queue}


web.serialize_job = serialize_job
web.serialize_queues = serialize_queues
web.get_queue_registry_jobs_count = get_queue_registry_jobs_count
web.blueprint.add_url_rule("/job/<job_id>/cancel", "cancel_job", cancel_job_view, methods=["POST"])
web.blueprint.context_processor(_context)
web.blueprint.record(_install)
errors.install(web.blueprint)
