"""Groups of executions: rq's ``Group``, written by ``submit_many(requests, group=NAME)``.

rq keeps a group as the set ``rq:group:NAME`` of job ids (and the name in
``rq:groups``), and each job's hash carries ``group_id``; its workers' maintenance
drops ids whose job has expired and groups left empty. rq's ``Group.enqueue_many``
executes the caller's pipeline itself, which would split dockrq's all-or-nothing
MULTI; ``write_group`` queues the same two SADDs into it instead
(``Group._add_jobs`` without its ``execute``), and the jobs get ``group_id``
from rq's own ``Queue.enqueue_many``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest

# rq and the status view are imported where they are used: ``dockrq``'s command line
# checks a group name with GROUP_PATTERN without loading them (README, "Start-up").
if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.job import Job

    from .status import ExecutionStatusView

GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
_GROUP_RE = re.compile(GROUP_PATTERN)


def check_group_name(name: str) -> str:
    """The name, or InvalidRequest naming ``group``."""
    if not isinstance(name, str) or not _GROUP_RE.match(name):
        raise InvalidRequest(f"group: {str(name)[:80]!r} does not match {GROUP_PATTERN}")
    return name


def group_key(name: str) -> str:
    """rq's set of the group's job ids."""
    from rq.group import Group

    return Group.get_key(name)


def write_group(pipe: Pipeline, name: str, ids: list[str]) -> None:
    """Add ``ids`` to rq's group ``name`` inside the caller's transaction."""
    from rq.group import Group

    pipe.sadd(Group.get_key(name), *ids)
    pipe.sadd(Group.REDIS_GROUP_KEY, name)


def views(jobs: list[Job | None], ids: list[str], raw_outcomes: list[Any]) -> list[ExecutionStatusView]:
    """One view per id still known (its job or its outcome exists), oldest first."""
    from schemas import Outcome

    from .status import build_view

    out = []
    for execution_id, job, raw in zip(ids, jobs, raw_outcomes, strict=True):
        outcome = Outcome.model_validate_json(raw) if raw else None
        if job is not None or outcome is not None:
            out.append(build_view(execution_id, job, outcome))
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    out.sort(key=lambda v: (v.enqueued_at or epoch, v.execution_id))
    return out
