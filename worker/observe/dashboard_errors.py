"""What the dashboard answers to a malformed URL or an impossible button: 4xx with a short
message, never rq-dashboard 0.9's 500 with a traceback (issue 14, a new user's trial).

rq-dashboard 0.9 answers 500 to an unknown registry in a job list (``UnboundLocalError``),
a non-numeric page size or page (``ValueError``), an unknown Redis instance number
(its ``push_rq_connection`` raises ``LookupError``), Compact on a queue whose list does not
exist (Redis ``no such key`` from rq's ``Queue.compact``), and a job's data when it has
dependencies (it decodes rq 3's ``str`` dependency ids). Imported by
``worker.observe.dashboard_views``, this module:

* checks the URL's values before rq-dashboard's views run (``check_instance``,
  ``check_listing``) and raises werkzeug's ``NotFound`` (404: no such instance or
  registry) or ``BadRequest`` (400: a page size, page or order that is not one);
* registers an error handler on rq-dashboard's blueprint (``handle``): an HTTP error answers its
  code with ``{"status": "ERROR", "message"}`` (JSON endpoints and buttons) or the message
  as text (pages); rq's ``NoSuchJobError`` answers 404, rq's ``InvalidJobOperation`` 409, Redis
  unreachable 503 (a warning line in the log, no traceback); any
  other exception is a genuine server error: logged with its traceback
  (``current_app.logger``) and answered 500 with a one-line message, never hidden as a 4xx;
* serves Compact (``compact_queue``) and a job's rq data (``rq_job_info``) without those 500s.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import redis
from flask import current_app, jsonify, make_response, request
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, validate_job_id
from rq_dashboard import web
from werkzeug.exceptions import BadRequest, HTTPException, NotFound

from schemas.connections import REDIS_DOWN, describe_redis_error
from worker.observe.dashboard_data import PSEUDO_REGISTRIES

RQ_REGISTRIES = ("queued", "failed", "deferred", "started", "finished", "scheduled", "canceled")
ORDERS = ("asc", "dsc")


def registries() -> tuple[str, ...]:
    """Every registry name a job list or Empty accepts: rq's and dockrq's pseudo-registries."""
    return RQ_REGISTRIES + tuple(PSEUDO_REGISTRIES)


def _instance_count() -> int:
    urls = current_app.config.get("RQ_DASHBOARD_REDIS_URL")
    return len(urls) if isinstance(urls, (list, tuple)) else 1


def check_instance() -> None:
    """Blueprint ``before_request``, run before rq-dashboard's ``push_rq_connection``: an
    instance number in the URL beyond the configured Redis URLs is a 404, not its LookupError;
    so is a job id rq refuses (``rq.job.validate_job_id``: a ValueError in every job view)."""
    args = request.view_args or {}
    number = args.get("instance_number")
    if number is not None and number >= _instance_count():
        count = _instance_count()
        raise NotFound(f"no Redis instance {number}: this dashboard has {count} (0 to {count - 1})")
    job_id = args.get("job_id")
    if job_id is not None:
        try:
            validate_job_id(job_id)
        except (TypeError, ValueError):
            raise NotFound(f"no such job: {job_id!r} is not an rq job id (letters, digits, _ and -)") from None


def check_registry(registry_name: str) -> None:
    """404 for a registry name neither rq nor dockrq has."""
    if registry_name not in registries():
        raise NotFound(f"no registry {registry_name!r}: one of {', '.join(registries())}")


def check_queue(queue: Queue) -> None:
    """404 for a queue rq has no trace of: not in ``rq:queues``, no job list, no registry
    of its own (a queue with only scheduled jobs is known: rq's ``schedule_job`` does not
    add it to ``rq:queues``). Compact, Requeue All and Empty answer the same for a typo."""
    conn = queue.connection
    registries = [getattr(queue, f"{name}_job_registry").key for name in RQ_REGISTRIES if name != "queued"]
    if not (conn.sismember(Queue.redis_queues_keys, queue.key) or conn.exists(queue.key, *registries)):
        raise NotFound(f"no queue {queue.name!r}")


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from None
    if number < 1:
        raise BadRequest(f"{name} must be 1 or more, not {number}")
    return number


def check_listing(registry_name: str, per_page: Any, order: str, page: Any) -> None:
    """A job list's URL values: known registry (else 404), ``per_page`` and ``page`` whole
    numbers >= 1 and ``order`` asc or dsc (else 400)."""
    check_registry(registry_name)
    _positive("per_page", per_page)
    _positive("page", page)
    if order not in ORDERS:
        raise BadRequest(f"order must be asc or dsc, not {order!r}")


def checked_listing(view: Any) -> Any:
    """rq-dashboard's job list view (page or JSON) with ``check_listing`` first."""

    @functools.wraps(view)
    def checked(instance_number: int, queue_name: str | None, registry_name: str, per_page: Any, order: str, page: Any) -> Any:
        check_listing(registry_name, per_page, order, page)
        return view(instance_number, queue_name, registry_name, per_page, order, page)

    return checked


@web.jsonify
def compact_queue(queue_name: str) -> dict[str, Any]:
    """rq's ``Queue.compact`` (drop ids of deleted jobs from the queue's list, FIFO kept).
    A queue rq does not know (``check_queue``): 404; a known queue with an empty list: nothing to do (OK)."""
    queue = Queue(queue_name, serializer=web.config.serializer, connection=current_app.redis_conn)
    check_queue(queue)
    try:
        queue.compact()
    except redis.ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return {"status": "OK", "message": f"queue {queue_name} is empty: nothing to compact"}
    return {"status": "OK"}


def rq_job_info(job: Job) -> dict[str, Any]:
    """rq-dashboard's ``job_info`` data for ``job`` (same fields), reading rq 3's dependency ids
    (``str``; rq-dashboard 0.9 decodes them as bytes and answers 500 for any job with one)."""
    latest = job.latest_result()
    encoder = current_app.config.get("RQ_DASHBOARD_JSON_ENCODER", json.JSONEncoder)
    info: dict[str, Any] = {
        "id": job.id, "created_at": web.serialize_date(job.created_at), "enqueued_at": web.serialize_date(job.enqueued_at),
        "started_at": web.serialize_date(job.started_at), "ended_at": web.serialize_date(job.ended_at),
        "origin": job.origin, "status": job.get_status(), "result": job.return_value(),
        "exc_info": latest.exc_string if latest else None, "description": web.format_job_description(job),
        "metadata": json.dumps(job.get_meta(), cls=encoder),
    }
    dep_ids = [(d.decode() if isinstance(d, bytes) else str(d)).split(":")[-1].strip() for d in job.dependency_ids]
    if dep_ids:
        info["depends_on"] = dep_ids
        info["depends_on_status"] = [
            "active" if Job.exists(d, connection=job.connection) else "expired" for d in dep_ids
        ]
    return info


def _answer(code: int, message: str) -> Any:
    wants_json = request.method != "GET" or request.path.endswith(".json")
    if wants_json:
        response = make_response(jsonify(status="ERROR", message=message), code)
    else:
        response = make_response(f"{code}: {message}\n", code)
        response.mimetype = "text/plain"
    response.headers.set("Cache-Control", "no-store")
    return response


def handle(exc: Exception) -> Any:
    """The blueprint's error handler (see the module docstring)."""
    if isinstance(exc, HTTPException):
        return _answer(exc.code or 500, str(exc.description))
    if isinstance(exc, NoSuchJobError):
        return _answer(404, f"no such job: {exc}")
    if isinstance(exc, InvalidJobOperation):
        return _answer(409, str(exc))
    if isinstance(exc, REDIS_DOWN):  # an outage, not a bug: one line in the log, no traceback
        current_app.logger.warning("dashboard: %s %s: Redis unreachable: %s", request.method, request.path, exc)
        return _answer(503, f"Redis unreachable ({describe_redis_error(exc)}); try again once it is back")
    current_app.logger.error("dashboard: %s %s failed", request.method, request.path, exc_info=exc)
    return _answer(500, f"internal error ({type(exc).__name__}); the dashboard's log has the traceback")


def install(blueprint: Any) -> None:
    """On rq-dashboard's blueprint, before it is registered: ``check_instance`` first of its
    ``before_request`` functions, and ``handle`` as its error handler."""
    blueprint.before_request_funcs.setdefault(None, []).insert(0, check_instance)
    blueprint.register_error_handler(Exception, handle)
