"""Replica acknowledgement of the writes that matter: Redis ``WAIT`` (DOCKRQ_REPLICA_ACKS).

Redis replicates asynchronously: a write the master answered may be missing
on the replica that a Sentinel failover promotes. ``WAIT numreplicas timeout``
blocks the calling connection until that many replicas have acknowledged every
write the connection made before it (Redis tracks a per-connection replication
offset), or the timeout passes, and returns how many did.

dockrq asks for it, when ``replica_acks`` > 0, after the two writes a caller
relies on: a submission (``Producer.submit``/``submit_many`` return only once
it is on the replicas) and an outcome (the worker confirms its outcome write;
``Producer.wait`` confirms before it hands an outcome over, so an outcome a
waiter saw is on the replicas too). A connection from a pool is not always the
one that wrote, so :meth:`ReplicaAcks.confirm` writes a small marker key and
sends ``WAIT`` on one connection in one round trip: the marker's offset is
past the write being confirmed, so replicas that have it have that write too.

Replicas are counted with ``ROLE`` (cached for ``ROLE_CACHE_SECONDS``): the
number waited for is ``min(replica_acks, connected replicas)``, so a master left
without replicas (the old master is gone after a failover) does not stall every
write for the timeout; such writes are not confirmed, and a warning says so.

Cost: one more round trip per confirmed write plus the replication delay (on
loopback about 0.1-0.3 ms); up to ``timeout`` when a replica is connected but
slow. What can still be lost is written in RELIABILITY.md.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS = 2.0
ROLE_CACHE_SECONDS = 5.0


class ReplicationTimeout(Exception):
    """Fewer replicas than asked confirmed a write within the timeout: the write is on the
    master, and may be lost if the master fails before it replicates."""

    def __init__(self, what: str, acked: int, wanted: int, timeout: float) -> None:
        super().__init__(
            f"{what} was written on the Redis master but only {acked} of {wanted} replica(s) confirmed it "
            f"within {timeout:g}s (DOCKRQ_REPLICA_ACKS): it may be lost if the master fails now"
        )
        self.acked = acked
        self.wanted = wanted


class ReplicaAcks:
    """``confirm(connection, what)`` after a write; a no-op when ``required`` is 0."""

    def __init__(self, required: int, timeout_seconds: float = DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS, *, marker_key: str) -> None:
        self.required = int(required)
        self.timeout_seconds = float(timeout_seconds)
        self.marker_key = marker_key
        self._replicas: int | None = None
        self._checked = 0.0
        self._warned = False
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self.required > 0

    def confirm(self, connection: Any, what: str) -> int | None:
        """WAIT for min(required, connected replicas); how many acknowledged (None: not asked).

        Raises ReplicationTimeout when fewer did; redis errors as redis-py raises them.
        """
        if self.required <= 0:
            return None
        wanted = min(self.required, self._connected_replicas(connection))
        acked = self._wait(connection, wanted)
        if acked < wanted:
            # The count may be stale (a failover: another master, without replicas yet): look again.
            fresh = min(self.required, self._connected_replicas(connection, refresh=True))
            if fresh < wanted:
                wanted, acked = fresh, self._wait(connection, fresh)
            if acked < wanted:
                raise ReplicationTimeout(what, acked, wanted, self.timeout_seconds)
        return acked

    def _wait(self, connection: Any, wanted: int) -> int:
        if wanted == 0:
            if not self._warned:
                log.warning(
                    "DOCKRQ_REPLICA_ACKS=%d but the Redis master has no connected replica: writes are not confirmed",
                    self.required,
                )
                self._warned = True
            return 0
        self._warned = False
        with connection.pipeline(transaction=False) as pipe:
            pipe.set(self.marker_key, "1", ex=60)
            pipe.execute_command("WAIT", wanted, max(1, int(self.timeout_seconds * 1000)))
            _, acked = pipe.execute()
        return int(acked)

    def _connected_replicas(self, connection: Any, *, refresh: bool = False) -> int:
        with self._lock:
            if not refresh and self._replicas is not None and time.monotonic() - self._checked < ROLE_CACHE_SECONDS:
                return self._replicas
        role = connection.execute_command("ROLE")
        # master: [b"master", offset, [[ip, port, offset], ...]]; a replica answers [b"slave", ...]
        kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
        count = len(role[2]) if kind == "master" and len(role) > 2 else 0
        with self._lock:
            self._replicas, self._checked = count, time.monotonic()
        return count
