"""The producer's side of ``replica_acks`` (DOCKRQ_REPLICA_ACKS): submissions and outcomes
confirmed on replicas with Redis ``WAIT`` (schemas/replication.py says what and at what cost).

A submission returns only once the replicas have it (:class:`NotReplicated` when too few
confirm in time); an outcome is handed to a waiter only once the replicas have it, so one a
waiter saw survives a failover.
"""

from __future__ import annotations

import logging
from typing import Any

from schemas.replication import ReplicaAcks, ReplicationTimeout

from .errors import NotReplicated

log = logging.getLogger(__name__)


class ProducerAcks:
    """``ReplicaAcks`` as the Producer uses them; every method is a no-op when ``required`` is 0."""

    def __init__(self, required: int, timeout_seconds: float, *, marker_key: str) -> None:
        self.acks = ReplicaAcks(required, timeout_seconds, marker_key=marker_key)

    def __bool__(self) -> bool:
        return bool(self.acks)

    def confirm_submission(self, connection: Any, ids: list[str]) -> None:
        """WAIT for the replicas after enqueuing ``ids``. Raises NotReplicated (carrying ``ids``)
        when fewer than asked confirm within the timeout; redis errors as redis-py raises them."""
        if not self.acks:
            return
        what = f"execution {ids[0]}" if len(ids) == 1 else f"{len(ids)} executions ({ids[0]} ...)"
        try:
            self.acks.confirm(connection, what)
        except ReplicationTimeout as exc:
            raise NotReplicated(ids, str(exc)) from None

    def outcome_confirmed(self, connection: Any, execution_id: str) -> bool:
        """Whether the outcome just read is on the replicas too (True when none are asked for).
        False (the caller reads again) when they did not confirm in time."""
        if not self.acks:
            return True
        try:
            self.acks.confirm(connection, f"the outcome of {execution_id}")
        except ReplicationTimeout as exc:
            log.warning("waiting for %s: %s; reading it again", execution_id, exc)
            return False
        return True
