"""Finding an execution's leftover container by its labels, whatever its name.

A container of an execution carries ``dockrq.executor`` and
``dockrq.execution`` (types.py); its name is only derived from them, and other
versions derived it differently. Adoption therefore looks the execution up by
those two labels before creating anything, so a leftover of an earlier dockrq
(or one renamed by hand) is followed instead of a second container being
started for the same execution.
"""

from __future__ import annotations

from typing import Any

from .client import DockerClient
from .types import LABEL_EXECUTION, LABEL_EXECUTOR

# Which leftover to follow when there are several: one that runs (it is doing the
# work), then one never started, then one that has ended; the newest of a kind.
_RANK = {"running": 0, "paused": 0, "restarting": 0, "created": 1, "exited": 2, "dead": 3}
# States docker reports (``State.Status``) in which the container's output is complete
# and attaching would wait forever for a start.
ENDED_STATES = frozenset({"exited", "dead"})


def find_leftover(client: DockerClient, labels: dict[str, str]) -> dict[str, Any] | None:
    """The container (an item of ``GET /containers/json``: ``Id``, ``State``, ``Names``...)
    labelled with ``labels``' executor and execution ids, or None. Raises DAEMON_ERRORS."""
    wanted = {k: labels[k] for k in (LABEL_EXECUTOR, LABEL_EXECUTION)}
    found = [c for c in client.labelled_containers(wanted) if c.get("State") in _RANK]
    if not found:
        return None
    return min(found, key=lambda c: (_RANK[c["State"]], -int(c.get("Created") or 0)))
