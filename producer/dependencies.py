"""Dependencies between executions: ``submit(request, depends_on=[ids])``, on rq's ``depends_on``.

A dependent is written as rq writes a job whose dependencies are unfinished
(``Queue.setup_dependencies``): status ``deferred``, in the queue's
DeferredJobRegistry, its id in each dependency's ``rq:job:DEP:dependents`` set
and theirs in its ``dependencies`` set, with rq's ``allow_failure`` set. It is
always deferred at submit (deciding needs reads, and a dependency that ends in
between would never release it); a worker's reaper pass releases a deferred
execution whose dependencies have all ``succeeded``.

dockrq jobs always finish in rq terms (the outcome key is the real result), so
rq releases a dependent whatever its dependency's outcome; the worker checks the
dependencies' outcomes before it starts one (``worker.execution.dependencies``;
the reaper's ``worker.faults.dependents`` sweep handles those rq never releases)
and ends it ``cancelled``/``dependency_failed`` naming the first that did not
succeed. Its own dependents follow the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rq.job import Job

from schemas import EXECUTION_ID_PATTERN, Keys

from .errors import InvalidRequest

_ID_RE = re.compile(EXECUTION_ID_PATTERN)

# KEYS: per dependency its rq job key and outcome key. Returns the 1-based positions of
# dependencies with neither (never submitted, or expired).
MISSING_LUA = """
local missing = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i], KEYS[i + 1]) == 0 then missing[#missing + 1] = (i + 1) / 2 end
end
return missing
"""


def check_depends_on(execution_id: str, depends_on: Iterable[str]) -> list[str]:
    """The dependency ids, each once, or InvalidRequest naming ``depends_on.N``."""
    ids = list(dict.fromkeys(depends_on))
    for index, dep in enumerate(ids):
        if not isinstance(dep, str) or not _ID_RE.match(dep):
            raise InvalidRequest(f"depends_on.{index}: {str(dep)[:80]!r} is not an execution id")
        if dep == execution_id:
            raise InvalidRequest(f"depends_on.{index}: an execution cannot depend on itself")
    return ids


def missing_keys(keys: Keys, depends_on: list[str]) -> list[str]:
    """KEYS of MISSING_LUA."""
    return [k for dep in depends_on for k in (Job.key_for(dep), keys.outcome(dep))]


def missing_error(depends_on: list[str], positions: list[int]) -> InvalidRequest:
    names = ", ".join(depends_on[int(p) - 1] for p in positions)
    return InvalidRequest(f"depends_on: no such execution: {names}")
