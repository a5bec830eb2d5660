"""The containers dockrq owns on a daemon, as the reaper and adoption see them.

Every container the executor creates carries ``dockrq.execution`` (and
``dockrq.executor``, ``dockrq.created``) labels (``worker.executor.spec``). The
reaper finds dead workers' and orphaned containers by those labels, adoption
follows one; both read them through ``OwnedContainer``, parsed once here, and
remove them through ``DockerExecutor.remove_container`` (Nomad's docker driver
keeps its dangling-container reconciler inside the driver for the same reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ExecutionOwnedElsewhere
from .spec import LABEL_CREATED, LABEL_EXECUTION, LABEL_EXECUTOR

#: The rq worker name among a container's owner labels (``worker.faults.owner.LABEL_WORKER``).
LABEL_OWNER_WORKER = "dockrq.worker"

if TYPE_CHECKING:
    from .client import DockerClient

#: The other live worker that runs a container's execution: its name ("" if unnamed), or None when
#: there is none (``worker.faults.contested``). Given to ``DockerExecutor.owner_alive`` by the
#: worker; without one (a standalone executor) any leftover is followed.
OwnerCheck = Callable[["OwnedContainer"], "str | None"]

#: Docker container states in which a container still holds an execution's process or result.
LIVE_STATES = frozenset({"created", "running", "paused", "restarting", "exited"})


@dataclass(frozen=True)
class OwnedContainer:
    """One labelled container from the daemon's container list (``GET /containers/json``)."""

    id: str
    execution_id: str
    executor_id: str | None
    state: str  # Docker's State: created, running, exited, ...
    created: float  # unix time: the dockrq.created label (sub-second), else Docker's Created
    labels: Mapping[str, str]

    @classmethod
    def from_listing(cls, container: Mapping[str, Any]) -> OwnedContainer:
        labels = dict(container.get("Labels") or {})
        try:
            created = float(labels.get(LABEL_CREATED) or container.get("Created") or 0)
        except ValueError:
            created = float(container.get("Created") or 0)
        return cls(
            id=container["Id"],
            execution_id=labels.get(LABEL_EXECUTION, ""),
            executor_id=labels.get(LABEL_EXECUTOR),
            state=str(container.get("State") or ""),
            created=created,
            labels=labels,
        )

    @classmethod
    def from_inspect(cls, inspected: Mapping[str, Any]) -> OwnedContainer:
        """The same, from ``GET /containers/{id}/json`` (docker-py's ``inspect_container``)."""
        config, state = inspected.get("Config") or {}, inspected.get("State") or {}
        labels = dict(config.get("Labels") or {})
        try:
            created = float(labels.get(LABEL_CREATED) or 0)
        except ValueError:
            created = 0.0
        return cls(
            id=inspected["Id"], execution_id=labels.get(LABEL_EXECUTION, ""), executor_id=labels.get(LABEL_EXECUTOR),
            state=str(state.get("Status") or ""), created=created or time.time(), labels=labels,
        )

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def owned_containers(client: DockerClient, execution_id: str | None = None) -> list[OwnedContainer]:
    """Every container on ``client``'s daemon labelled ``dockrq.execution`` (of any executor id:
    nodes may share a daemon), or only ``execution_id``'s, whatever its name, in any state
    (``GET /containers/json?all=1`` filtered by label). Raises one of DAEMON_ERRORS."""
    label = LABEL_EXECUTION if execution_id is None else f"{LABEL_EXECUTION}={execution_id}"
    listing = client.api.containers(all=True, filters={"label": [label]})
    return [OwnedContainer.from_listing(c) for c in listing]


def check_not_owned_elsewhere(inspected: Mapping[str, Any], owner_alive: OwnerCheck | None) -> None:
    """Raise ExecutionOwnedElsewhere when the container ``inspected`` (of this execution, made
    by someone else) belongs to another live worker process per ``owner_alive``: it runs the
    execution, and following or starting it here would make a second run of it (two outcomes,
    the second's container create ending ``error``)."""
    if owner_alive is None:
        return
    container = OwnedContainer.from_inspect(inspected)
    runner = owner_alive(container)
    if runner is not None:
        owner = runner or container.labels.get(LABEL_OWNER_WORKER)
        raise ExecutionOwnedElsewhere(
            f"its container {container.short_id} ({container.state}) belongs to live worker {owner or '(unnamed)'}",
            container_id=container.id, owner=owner, state=container.state,
        )
