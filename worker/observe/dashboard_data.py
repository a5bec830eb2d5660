"""What the dashboard shows of dockrq executions, read from Redis (no Flask here).

rq records every execution whose job function returned as ``finished``, failed
and cancelled containers included; the truth is the execution's outcome
(``P:exec:ID:outcome``) and the job's meta, which the worker keeps in step with
it (``status``, ``exit_code``, ``error_code``, ``image``, ``worker``, ``node``,
``pull_seconds``). Counts and per-status lists come from the status index
``P:ended:QUEUE:STATUS`` that is written with each outcome, so they cost one
command per status whatever the number of executions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
from rq.job import Job, JobStatus

from schemas.compact_log import read_compact_log
from schemas import DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_RETENTION_SECONDS, ExecutionStatus, Keys, Outcome

STATUSES: tuple[str, ...] = tuple(s.value for s in ExecutionStatus)
ALL_ENDED = "ended"  # the pseudo-registry listing every status, newest first
# The list of the outcome status "failed" (the container exited non-zero): rq-dashboard's own
# registry "failed" is rq's FailedJobRegistry, a different list (jobs rq itself failed).
FAILED_OUTCOME = "failed-outcome"
# {pseudo-registry name in the dashboard's URLs: the outcome status it lists}; every other
# status is listed under its own name (none is an rq registry name).
STATUS_OF_REGISTRY: dict[str, str] = {FAILED_OUTCOME if s == "failed" else s: s for s in STATUSES}
REGISTRY_OF_STATUS: dict[str, str] = {s: r for r, s in STATUS_OF_REGISTRY.items()}
PSEUDO_REGISTRIES = (ALL_ENDED, *STATUS_OF_REGISTRY)
# Output shown on an execution's page: the last lines of each stream, within a byte budget.
TAIL_LINES = 40
TAIL_BYTES = 8192
# Environment values shorter than this are not masked in output (they would mask ordinary words).
MIN_SECRET_LENGTH = 4
# Bootstrap 4 badge classes (``badge-dockrq-lost`` is defined by dockrq's templates).
BADGES = {
    "succeeded": "badge-success", "failed": "badge-danger", "timed_out": "badge-warning",
    "cancelled": "badge-secondary", "rejected": "badge-info", "error": "badge-dark",
    "lost": "badge-dockrq-lost", "running": "badge-primary", "pulling": "badge-primary",
}
_RQ_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


@dataclass(frozen=True)
class DashboardSettings:
    """The dashboard's view of dockrq, from the environment ``scripts/dashboard.sh`` passes on."""

    prefix: str = DEFAULT_PREFIX
    queue: str = DEFAULT_QUEUE
    retention_seconds: int = DEFAULT_RETENTION_SECONDS

    @classmethod
    def from_env(cls) -> DashboardSettings:
        queues = [q.strip() for q in os.environ.get("DOCKRQ_QUEUES", "").split(",") if q.strip()]
        return cls(
            prefix=os.environ.get("DOCKRQ_PREFIX", "").strip() or DEFAULT_PREFIX,
            queue=os.environ.get("DOCKRQ_QUEUE", "").strip() or (queues[0] if queues else DEFAULT_QUEUE),
            retention_seconds=int(os.environ.get("DOCKRQ_RETENTION_SECONDS", "").strip() or DEFAULT_RETENTION_SECONDS),
        )

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)


def is_execution(job: Job) -> bool:
    """A dockrq execution's rq job (the producer and the worker put ``execution_id`` in its meta)."""
    return "execution_id" in (job.meta or {})


def status_counts(connection: redis.Redis, settings: DashboardSettings, queue: str) -> dict[str, int | None]:
    """{status: executions of ``queue`` that ended so within the retention}, one round trip.

    None for each status when the index cannot be read (an ACL user without the
    dashboard's DOCKRQ_PREFIX): the page shows rq's numbers and no counts, not an error."""
    since = time.time() - settings.retention_seconds
    try:
        with connection.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcount(settings.keys.ended(queue, status), since, "+inf")
            return dict(zip(STATUSES, (int(n) for n in pipe.execute()), strict=True))
    except redis.ResponseError:
        return dict.fromkeys(STATUSES)


def ended_page(
    connection: redis.Redis, settings: DashboardSettings, queue: str, registry: str, offset: int, count: int, newest_first: bool
) -> tuple[int, list[tuple[str, str, float]]]:
    """(total, [(execution id, status, end time)]) of one page of a pseudo-registry
    (``ended``, or one status's list: ``PSEUDO_REGISTRIES``), from the status index.
    Raises KeyError for any other name (rq's registries are not read here)."""
    statuses = STATUSES if registry == ALL_ENDED else (STATUS_OF_REGISTRY[registry],)
    since = time.time() - settings.retention_seconds
    keys = [settings.keys.ended(queue, s) for s in statuses]
    try:
        replies = _page_replies(connection, keys, since, offset + count, newest_first)
    except redis.ResponseError:  # not readable with this ACL user: an empty list
        return 0, []
    total = sum(int(n) for n in replies[: len(keys)])
    merged = [
        (_text(member), status, float(score))
        for status, entries in zip(statuses, replies[len(keys) :], strict=True)
        for member, score in entries
    ]
    merged.sort(key=lambda e: e[2], reverse=newest_first)
    return total, merged[offset : offset + count]


def _page_replies(connection: redis.Redis, keys: list[str], since: float, first: int, newest_first: bool) -> list[Any]:
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zcount(key, since, "+inf")
        for key in keys:  # each index's first offset+count entries in the order asked: enough to merge
            if newest_first:
                pipe.zrevrangebyscore(key, "+inf", since, start=0, num=first, withscores=True)
            else:
                pipe.zrangebyscore(key, since, "+inf", start=0, num=first, withscores=True)
        return pipe.execute()


def row(job: Job, connection: redis.Redis, settings: DashboardSettings) -> dict[str, Any] | None:
    """What a job list shows of one execution (None for rq jobs that are not executions).

    From the meta; the outcome is read only when rq says the job ended and the
    meta does not (the worker died between the two writes)."""
    if not is_execution(job):
        return None
    meta = job.meta
    status, exit_code, error_code = meta.get("status"), meta.get("exit_code"), meta.get("error_code")
    if status not in STATUSES and job.get_status(refresh=False) in _RQ_ENDED:
        outcome = read_outcome(connection, settings, job.id)
        if outcome is not None:
            status, exit_code = outcome.status.value, outcome.exit_code
            error_code = outcome.error.code if outcome.error else None
        else:
            status = "ended without outcome (the reaper writes lost)"
    ended = status in STATUSES
    status = status or "queued"
    return {
        "status": status,
        "label": label(status, exit_code, error_code),
        "badge": BADGES.get(status, "badge-light"),
        "ended": ended,
        "exit_code": exit_code,
        "error_code": error_code,
        "image": meta.get("image"),
        "worker": meta.get("worker"),
        "can_cancel": not ended,
        "can_requeue": False,  # an execution runs at most once: submit a new one
    }


def label(status: str, exit_code: int | None, error_code: str | None) -> str:
    """``failed · exit 3``, ``error · image_pull``, ``timed_out``...: how a row names an ending."""
    if status in ("succeeded", "failed") and exit_code is not None:
        return f"{status} · exit {exit_code}"
    if error_code and status in ("error", "rejected", "lost"):
        return f"{status} · {error_code}"
    return status


def read_outcome(connection: redis.Redis, settings: DashboardSettings, execution_id: str) -> Outcome | None:
    """The outcome, or None (not ended, or not readable with this ACL user)."""
    try:
        raw = connection.lindex(settings.keys.outcome(execution_id), 0)
    except redis.ResponseError:
        return None
    return Outcome.model_validate_json(raw) if raw else None


def execution(job: Job, connection: redis.Redis, settings: DashboardSettings) -> dict[str, Any] | None:
    """Everything an execution's page shows (None for other rq jobs); secrets masked.

    ``durations``: ``queued`` (rq enqueued -> a worker took it), ``pull`` (the image
    pull; None when the image was present), ``run`` (container start -> end).
    ``stdout``/``stderr``: the last TAIL_LINES lines (TAIL_BYTES at most) from the
    outcome, or from the log stream while it runs.
    """
    base = row(job, connection, settings)
    if base is None:
        return None
    meta = job.meta
    outcome = read_outcome(connection, settings, job.id)
    result = outcome.result if outcome else None
    secrets = _secrets(job)
    if outcome is not None:
        status, code = outcome.status.value, (outcome.error.code if outcome.error else None)
        base.update(
            status=status, ended=True, exit_code=outcome.exit_code, error_code=code, can_cancel=False,
            label=label(status, outcome.exit_code, code), badge=BADGES.get(status, "badge-light"),
        )
    if result is not None:
        stdout, stderr = result.stdout, result.stderr
    else:
        stdout, stderr = _log_tail(connection, settings, job.id)
    run = None
    if result is not None and result.started_at and result.finished_at:
        run = (result.finished_at - result.started_at).total_seconds()
    queued = result.queued_seconds if result is not None else None
    if queued is None and job.enqueued_at and job.started_at:
        queued = (_utc(job.started_at) - _utc(job.enqueued_at)).total_seconds()
    pull = result.pull_seconds if result is not None else meta.get("pull_seconds")
    return {
        **base,
        "execution_id": job.id,
        "node": meta.get("node"),
        "container_id": meta.get("container_id") or (result.container_id if result else None),
        "oom_killed": bool(result and result.oom_killed),
        "error_message": _mask(outcome.error.message, secrets) if outcome and outcome.error else None,
        "durations": {"queued": queued, "pull": pull, "run": run},
        "stdout": _mask(_tail(stdout), secrets),
        "stderr": _mask(_tail(stderr), secrets),
        "stdout_truncated": bool(result and result.stdout_truncated),
        "stderr_truncated": bool(result and result.stderr_truncated),
    }


def _log_tail(connection: redis.Redis, settings: DashboardSettings, execution_id: str) -> tuple[str, str]:
    """The end of an execution's log (its stream, or the compact log it ended as), per stream."""
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    size = 0
    try:
        batches = connection.xrevrange(settings.keys.log_stream(execution_id), count=64)
        if not batches:  # an ended log compacted to one string (schemas.compact_log)
            compact = read_compact_log(connection, settings.keys.log_compact(execution_id)) or []
            batches = [(b"", {"batch": b.to_json()}) for b in reversed(compact)]
    except redis.ResponseError:
        return "", ""
    for _id, fields in batches:
        batch = json.loads(fields.get(b"batch") or fields.get("batch") or "{}")
        for entry in reversed(batch.get("entries") or []):
            out.setdefault(entry.get("stream", "stdout"), []).insert(0, entry.get("data", ""))
            size += len(entry.get("data", ""))
        if size > 2 * TAIL_BYTES:
            break
    return "".join(out["stdout"]), "".join(out["stderr"])


def _tail(text: str) -> str:
    lines = text[-TAIL_BYTES:].splitlines(keepends=True)
    return "".join(lines[-TAIL_LINES:])


def _secrets(job: Job) -> list[str]:
    """The request's environment values: what a container may print and must not be shown."""
    try:
        request = job.args[0] if job.args else {}
        env = (request.get("engine") or {}).get("env") or {}
    except Exception:  # noqa: BLE001 - unreadable job data: nothing to mask from it
        return []
    return sorted((str(v) for v in env.values() if len(str(v)) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
