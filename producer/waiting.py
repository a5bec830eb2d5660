"""``Producer.wait``: block until an execution's outcome exists, riding out Redis outages.

The outcome key is a one-element list; a waiter ``BLMOVE``s it onto itself (non-destructive,
so any number of waiters get it) in slices of at most ``BLOCK_SLICE_SECONDS``, and between
slices checks that the execution still exists: an execution whose rq job and outcome are
both gone for ``VANISH_GRACE_SECONDS`` (Redis restarted without persistence, a failover lost
it, the keys expired) ends the wait with ExecutionVanished instead of waiting forever. With
``replica_acks`` an outcome is handed over only once the replicas confirm it (producer.replicas).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from schemas import Keys, Outcome
from schemas.connections import BLOCK_SLICE_SECONDS, REDIS_DOWN, ride_out_outage

from .errors import ExecutionVanished
from .replicas import ProducerAcks

log = logging.getLogger(__name__)

# An execution with neither an rq job nor an outcome for this long has vanished (not a
# race between the job's end and its outcome write, which are far closer together).
VANISH_GRACE_SECONDS = 3.0


class OutcomeWaiter:
    """One ``wait`` call. ``presence(execution_id)`` -> (outcome exists, rq job exists, claim exists)."""

    def __init__(
        self, client: redis.Redis, blocking: redis.Redis, keys: Keys, acks: ProducerAcks,
        presence: Callable[[str], tuple[bool, bool, bool]],
    ) -> None:
        self.client = client
        self.blocking = blocking
        self.keys = keys
        self.acks = acks
        self.presence = presence

    def wait(self, execution_id: str, timeout: float | None, spent: float = 0.0) -> Outcome:
        """The outcome once it exists. Raises TimeoutError after ``timeout`` seconds (None: no
        limit; ``spent`` of them already gone, e.g. riding out Redis before its first answer),
        ExecutionVanished when Redis no longer knows the execution."""
        key = self.keys.outcome(execution_id)
        deadline = None if timeout is None else time.monotonic() + timeout - spent
        missing_since: float | None = None

        def redis_away(exc: Exception, failures: int) -> None:
            if failures == 1:  # once per outage
                log.warning("waiting for %s: Redis unreachable (%s); retrying until it is back", execution_id, exc)

        def in_time() -> bool:
            return deadline is None or time.monotonic() < deadline

        while True:  # the first slice runs even with no time left: an ended execution's outcome is at hand
            remaining = None if deadline is None else deadline - time.monotonic()
            block = BLOCK_SLICE_SECONDS if remaining is None else max(min(BLOCK_SLICE_SECONDS, remaining), 0.01)
            try:
                raw, has_outcome, has_job = ride_out_outage(
                    lambda: self._slice(execution_id, key, block), redis_away, keep_trying=in_time
                )
            except REDIS_DOWN:
                raw, has_outcome, has_job = None, True, True  # away past the deadline
            if raw is not None and self.acks.outcome_confirmed(self.client, execution_id):
                return Outcome.model_validate_json(raw)
            if not in_time():
                raise TimeoutError(f"execution {execution_id} has not ended after {timeout}s")
            if has_outcome or has_job:
                missing_since = None
            elif missing_since is None:
                missing_since = time.monotonic()
            elif time.monotonic() - missing_since > VANISH_GRACE_SECONDS:
                raise ExecutionVanished(execution_id)

    def _slice(self, execution_id: str, key: str, block: float) -> tuple[bytes | None, bool, bool]:
        """One BLMOVE of at most ``block`` seconds: (the outcome, or None and whether an outcome / rq job exists)."""
        raw = self.blocking.blmove(key, key, block, "RIGHT", "LEFT")
        if raw is not None:
            return raw, True, True
        has_outcome, has_job, _ = self.presence(execution_id)
        return None, has_outcome, has_job
