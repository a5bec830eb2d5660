"""The worker's side of DOCKRQ_REPLICA_ACKS: an outcome write confirmed by replicas (Redis WAIT).

See schemas/replication.py for what is confirmed and what it costs. The
master can fail between the outcome write and its confirmation, taking the
write with it: so the confirmation writes the outcome again first (the
first-writer-wins script makes that a no-op when it is there), and a Redis
error is raised for the caller to retry (against the new master, once the
Sentinels have promoted one). Too few replicas within the timeout is logged,
not raised: the outcome is on the master, and a worker cannot take it back
(``Producer.wait`` confirms again before it hands the outcome to a waiter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from schemas.replication import ReplicaAcks, ReplicationTimeout

__all__ = ["ReplicaAcks", "confirm_outcome"]

log = logging.getLogger(__name__)


def confirm_outcome(acks: ReplicaAcks | None, connection: Any, execution_id: str, rewrite: Callable[[], Any]) -> None:
    """``rewrite()`` (the idempotent outcome write), then WAIT for the replicas.

    Raises redis errors (retry it); a confirmation that falls short is only logged.
    """
    if not acks:
        return
    rewrite()
    try:
        acks.confirm(connection, f"the outcome of {execution_id}")
    except ReplicationTimeout as exc:
        log.warning("execution %s: %s", execution_id, exc)
