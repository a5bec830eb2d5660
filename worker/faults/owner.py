"""Who owns a container, by its labels, and whether that worker process still lives.

Every container a dockrq worker creates carries its owner's identity as labels
(``worker.service.runtime.build_executor`` and ``DockrqWorker.bootstrap``):

=====================  ==========================================================
``dockrq.worker``      the rq worker's name (its hash ``rq:worker:NAME``)
``dockrq.host``        ``socket.gethostname()`` of the worker process
``dockrq.pid``         the worker process's PID
``dockrq.pid_ns``      its PID namespace (``/proc/self/ns/pid``, e.g. ``pid:[4026531836]``)
=====================  ==========================================================

They let a reaper judge a container's owner when Redis no longer knows the
execution (``worker.faults.forgotten``: no rq job, so no ``worker_name`` to
follow), with the rules ``worker.faults.liveness`` applies to rq workers:

- **Same host and PID namespace**: the owner lives while its PID is a live
  process (``liveness.process_alive``: not gone, not a zombie) that started no
  later than the container was created (a newer process under that PID is a
  reuse of a dead owner's PID). The reaper's own PID counts as dead: this
  process runs no such execution (``SweepContext.running_here`` is excluded
  first), so the container is a previous incarnation's or a leftover.
- **Another host or PID namespace**: the owner lives while Redis says so, as
  the orphans sweep judges a started job's owner: its rq worker hash has a
  heartbeat younger than ``reap_after_seconds`` (Redis's clock), it did not
  register its death, or Redis itself has been up for less than
  ``reap_after_seconds`` (``Liveness.is_dead(by_pid=False)``). After Redis lost
  its data a live owner's next heartbeat (every ``heartbeat_seconds``) writes
  its hash again.
- **No owner labels** (made by a worker older than these labels, or a
  standalone executor given the deployment label): not known alive.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.faults.liveness import pid_namespace, process_alive

if TYPE_CHECKING:
    from worker.faults.liveness import Liveness, WorkerState

LABEL_WORKER = "dockrq.worker"
LABEL_HOST = "dockrq.host"
LABEL_PID = "dockrq.pid"
LABEL_PID_NS = "dockrq.pid_ns"
# /proc/<pid>/stat gives a start time in whole clock ticks after boot (btime: whole seconds).
_START_SLACK_SECONDS = 2.0


def owner_labels(worker_name: str | None = None) -> dict[str, str]:
    """This process's owner labels (``dockrq.host``, ``dockrq.pid``, ``dockrq.pid_ns``; with
    ``worker_name``, ``dockrq.worker`` too), to put on every container it creates."""
    labels = {LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid())}
    ns = pid_namespace()
    if ns:
        labels[LABEL_PID_NS] = ns
    if worker_name:
        labels[LABEL_WORKER] = worker_name
    return labels


@dataclass(frozen=True)
class ContainerOwner:
    """The owner a container's labels name; any field may be missing."""

    worker: str | None
    host: str | None
    pid: int | None
    pid_ns: str | None

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> ContainerOwner | None:
        """The owner of a container with Docker ``labels``; None when it carries no owner label."""
        pid = labels.get(LABEL_PID, "")
        owner = cls(
            worker=labels.get(LABEL_WORKER) or None,
            host=labels.get(LABEL_HOST) or None,
            pid=int(pid) if pid.isdigit() else None,
            pid_ns=labels.get(LABEL_PID_NS) or None,
        )
        return owner if any((owner.worker, owner.host, owner.pid)) else None


def owner_alive(
    owner: ContainerOwner | None, created: float, liveness: Liveness, states: Mapping[str, WorkerState],
    clock: Callable[[], tuple[float, float]],
) -> bool:
    """Whether the worker process owning a container (created at unix time ``created``) lives.

    ``states``: ``liveness.states`` of the owners' worker names; ``clock``: Redis's time and
    uptime (``Liveness.clock``, read only for an owner elsewhere). The rules are the module's."""
    if owner is None:
        return False
    local = local_owner_alive(owner, created, liveness)
    if local is not None:
        return local
    state = states.get(owner.worker or "")
    if state is None:
        return False
    now, uptime = clock()
    return not liveness.is_dead(state, now, uptime, by_pid=False)


def local_owner_alive(owner: ContainerOwner, created: float, liveness: Liveness) -> bool | None:
    """The verdict by PID when the owner ran on this host in this PID namespace; None otherwise."""
    if not (owner.pid and owner.host == liveness.hostname and owner.pid_ns and owner.pid_ns == liveness.pid_ns):
        return None
    if owner.pid == os.getpid() or not process_alive(owner.pid):
        return False
    started = process_started_at(owner.pid)
    return started is None or started <= created + _START_SLACK_SECONDS


def process_started_at(pid: int) -> float | None:
    """Unix time the process ``pid`` of this host started (``/proc``); None where it cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
