"""Dependencies, worker side: an execution runs only once all it depends on have ``succeeded``.

dockrq submits a dependent as an rq job with ``depends_on`` and rq's
``allow_failure`` (``producer.dependencies``). rq releases a dependent when its
dependencies' rq jobs end (finished, or failed: a lost worker, a refused job),
but a dockrq job *finishes* in rq whatever its container did; the outcome key
is the truth. So:

- ``blocking_outcome`` (called by the job function before anything else): the
  dependencies' outcomes are read; the first that is not ``succeeded`` ends
  this execution ``cancelled`` with error code ``dependency_failed`` naming it,
  without a container. That outcome in turn blocks this execution's own
  dependents (transitively).
- ``verdict`` is also what the reaper's ``worker.faults.dependents`` sweep uses:
  rq never releases a dependent of a *cancelled* (or stopped) job, nor one
  deferred after its dependency already ended; that sweep ends or releases them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rq.job import Job

from schemas import ExecutionStatus, Keys, Outcome

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

# A dependency whose rq job ended releases its dependents right after its outcome is
# written; one without an outcome yet (written late, after a Redis outage) is waited for this long.
OUTCOME_WAIT_SECONDS = 10.0
DEPENDENCY_FAILED = "dependency_failed"


def verdict(connection: Redis, keys: Keys, deps: list[str]) -> tuple[str, str | None, str]:
    """("run" | "wait" | "fail", the dependency that decided, why) from the dependencies'
    outcomes (``P:exec:ID:outcome``) and rq jobs: any not ``succeeded``, or gone without an
    outcome, is "fail"; any still without an outcome is "wait"; else "run"."""
    with connection.pipeline(transaction=False) as pipe:
        for dep in deps:
            pipe.lindex(keys.outcome(dep), 0)
            pipe.exists(Job.key_for(dep))
        replies = pipe.execute()
    waiting = None
    for dep, raw, has_job in zip(deps, replies[0::2], replies[1::2], strict=True):
        if raw is not None:
            status = Outcome.model_validate_json(raw).status
            if status != ExecutionStatus.SUCCEEDED:
                return "fail", dep, f"dependency {dep} ended {status.value}"
        elif not has_job:
            return "fail", dep, f"dependency {dep} no longer exists (no rq job, no outcome)"
        elif waiting is None:
            waiting = dep
    if waiting is not None:
        return "wait", waiting, f"dependency {waiting} has not ended"
    return "run", None, ""


def blocking_outcome(connection: Redis, keys: Keys, job: Job | None, execution_id: str) -> Outcome | None:
    """The ``cancelled``/``dependency_failed`` outcome this execution must end with instead of running, or None."""
    deps = list(getattr(job, "_dependency_ids", None) or [])
    if not deps:
        return None
    deadline = time.monotonic() + OUTCOME_WAIT_SECONDS
    while True:
        decision, _dep, why = verdict(connection, keys, deps)
        if decision == "run":
            return None
        if decision == "fail":
            return Outcome.failure(execution_id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, why)
        if time.monotonic() > deadline:
            return Outcome.failure(
                execution_id, ExecutionStatus.CANCELLED, DEPENDENCY_FAILED, f"{why} (released by rq without an outcome)"
            )
        time.sleep(0.5)
