"""Is the rq worker that owns an execution still alive?

rq already keeps the evidence: every worker has a hash ``rq:worker:NAME`` with
``last_heartbeat`` (written by the worker's clock) and a ``death`` field once it
stopped cleanly. A dockrq worker refreshes it every ``heartbeat_seconds`` from
a thread of its own, busy or idle, so a heartbeat older than
``reap_after_seconds`` means the process is gone (SIGKILL, host lost, network
cut off from Redis).

Two guards keep a live worker from being taken for dead:

- After a Redis restart every heartbeat looks old, so nothing is judged dead
  until Redis has been up for ``reap_after_seconds`` (``INFO server`` uptime):
  live workers have had time to beat again by then.
- Ages are measured against Redis's clock (``TIME``), so the reaper's own clock
  does not matter; the owners' clocks must be within ``reap_after_seconds -
  heartbeat_seconds`` of it (NTP).

A worker on the same host and in the same PID namespace (a restarted worker,
a sibling in a ``--pool``) can be judged at once by its PID: if that process
is gone (or a zombie, or is this very process under another name) it is dead.
This is what lets a restarted worker adopt its predecessor's containers
without waiting for the heartbeat to age. Only a worker that would adopt (same
executor id) uses it; others wait for the heartbeat to age, so a restarting
worker gets the first chance to adopt rather than see its containers stopped.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from rq.utils import utcparse

if TYPE_CHECKING:
    from redis import Redis

    from worker.config.settings import WorkerSettings

# Extra fields a DockrqWorker writes into its rq worker hash (rq keeps unknown fields).
FIELD_EXECUTOR = "dockrq_executor"
FIELD_PID_NS = "dockrq_pid_ns"


def worker_key(name: str) -> str:
    from rq.worker import Worker

    return Worker.redis_worker_namespace_prefix + name


def pid_namespace() -> str:
    """This process's PID namespace, e.g. ``pid:[4026531836]``; '' where /proc cannot tell."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def identity(executor_id: str) -> dict[str, str]:
    """The fields a DockrqWorker adds to its rq worker hash."""
    return {FIELD_EXECUTOR: executor_id, FIELD_PID_NS: pid_namespace()}


# rq's own TTL for a started entry of a job without timeout (rq.defaults.DEFAULT_WORKER_TTL).
RQ_MIN_TTL = 420


def rq_heartbeat_ttl(settings: WorkerSettings) -> int:
    """TTL of a started job's entry in rq's StartedJobRegistry between two heartbeats.

    rq treats an entry past its TTL as abandoned: failed, no outcome, container
    left running. The reaper does not wait for that (it judges the owner's
    heartbeat after ``reap_after_seconds``), so this TTL is only rq's backstop
    for when no dockrq worker is alive; it stays long so that a Redis outage
    of a few minutes cannot get a live worker's job failed by rq's cleanup.
    """
    return max(RQ_MIN_TTL, int(math.ceil(2 * settings.reap_after_seconds + settings.heartbeat_seconds)))


@dataclass(frozen=True)
class WorkerState:
    """What Redis says about one rq worker."""

    name: str
    exists: bool
    died: bool
    last_heartbeat: datetime | None
    hostname: str | None
    pid: int | None
    pid_ns: str | None
    executor_id: str | None


class Liveness:
    """Judges rq workers alive or dead; one per reaper."""

    def __init__(self, connection: Redis, *, reap_after: float, worker_name: str | None = None) -> None:
        self.connection = connection
        self.reap_after = reap_after
        self.worker_name = worker_name  # this process's worker: never dead to itself
        self.hostname = socket.gethostname()
        self.pid_ns = pid_namespace()

    def states(self, names: list[str]) -> dict[str, WorkerState]:
        names = list(dict.fromkeys(n for n in names if n))
        if not names:
            return {}
        fields = ("last_heartbeat", "death", "hostname", "pid", FIELD_PID_NS, FIELD_EXECUTOR, "birth")
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(worker_key(name), fields)
            replies = pipe.execute()
        out = {}
        for name, values in zip(names, replies, strict=True):
            heartbeat, death, hostname, pid, pid_ns, executor, birth = (_text(v) for v in values)
            exists = any(v is not None for v in values)
            stamp = heartbeat or birth
            out[name] = WorkerState(
                name=name,
                exists=exists,
                died=death is not None,
                last_heartbeat=_parse_time(stamp),
                hostname=hostname,
                pid=int(pid) if pid and pid.isdigit() else None,
                pid_ns=pid_ns,
                executor_id=executor,
            )
        return out

    def clock(self) -> tuple[float, float]:
        """(Redis's time as a unix timestamp, Redis uptime in seconds), in one round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.info("server")
            (seconds, micros), info = pipe.execute()
        return seconds + micros / 1e6, float(info.get("uptime_in_seconds", 0))

    def is_dead(self, state: WorkerState, now: float, uptime: float, *, by_pid: bool = True) -> bool:
        """Whether ``state``'s worker is gone. ``by_pid=False`` ignores the same-host PID check:
        a reaper that would stop (not adopt) the owner's containers waits for the heartbeat
        to age, which gives a restarting owner the time to adopt them first."""
        if state.name == self.worker_name:
            return False
        if state.died:
            return True
        local = self._local_verdict(state) if by_pid else None
        if local is not None:
            return local
        if uptime < self.reap_after:
            return False  # Redis restarted recently: live workers may not have beaten yet
        if not state.exists or state.last_heartbeat is None:
            return True  # the hash expired: no heartbeat for its whole TTL
        return now - state.last_heartbeat.timestamp() >= self.reap_after

    def _local_verdict(self, state: WorkerState) -> bool | None:
        """True/False when the owner ran on this host in this PID namespace; None otherwise."""
        if not (state.exists and state.pid and self.pid_ns and state.pid_ns == self.pid_ns):
            return None
        if state.hostname != self.hostname:
            return None
        if state.pid == os.getpid():
            return True  # a previous incarnation of this process (same PID, another name)
        return not process_alive(state.pid)


def process_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this host (signal 0; one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) S ...": the state letter follows the last ')'
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return utcparse(value)
    except ValueError:
        return None
