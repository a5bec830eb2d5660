"""The Redis side of one execution: what a worker writes so producers can follow it.

Everything here speaks the wire contract of ``schemas.wire`` and nothing else:
the outcome list (written once, first writer wins), the live log topic plus its
capped replay stream (one pipeline per batch, so both always carry the same
``seq``), the global events topic and the rq job's ``meta``. Each state change
is one round trip; the per-execution overhead budget is a few milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from schemas import WRITE_OUTCOME_LUA, Event, ExecutionState, Keys, LogBatch, LogEntry, Outcome

from .replicated import ReplicaAcks, confirm_outcome
from .settings import DEFAULT_OUTCOME_RETRY_SECONDS

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.job import Job


log = logging.getLogger(__name__)

# Redis hiccups (restart, failover) are retried with capped, jittered backoff until
# Redis has been unreachable for ``outcome_retry_seconds`` (DOCKRQ_OUTCOME_RETRY_SECONDS):
# then the outcome write gives up and raises, and the worker settles the job once
# Redis is back (worker/resilience.py).
OUTCOME_RETRY_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.05)
LOG_RETRY_BACKOFF = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")


class ExecutionChannels:
    """Writes one execution's events, logs and outcome.

    ``job`` is the rq job running it (None when called outside rq, e.g. tests);
    its ``meta`` mirrors the state so rq-dashboard shows it.
    """

    def __init__(
        self,
        connection: Redis,
        keys: Keys,
        execution_id: str,
        *,
        worker: str | None,
        retention_seconds: int,
        log_stream_maxlen: int,
        job: Job | None = None,
        outcome_retry_seconds: float = DEFAULT_OUTCOME_RETRY_SECONDS,
        acks: ReplicaAcks | None = None,
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.execution_id = execution_id
        self.worker = worker
        self.retention_seconds = int(retention_seconds)
        self.log_stream_maxlen = log_stream_maxlen
        self.job = job
        self.outcome_retry_seconds = outcome_retry_seconds
        self.acks = acks  # DOCKRQ_REPLICA_ACKS: the outcome write is confirmed by replicas (WAIT)
        # Since when this execution's writes have found Redis unreachable (None: it answers).
        # One clock for the log batches, the eof and the outcome, so an ending waits for
        # Redis about outcome_retry_seconds in all, not that long for each of them.
        self._down_since: float | None = None
        self._write_outcome = connection.register_script(WRITE_OUTCOME_LUA)
        self._log_lock = threading.Lock()
        self._sent = 0  # log entries shipped so far: the next batch's seq
        self._logs_stalled = False
        self._eof = False

    # -- start-of-run checks -------------------------------------------------

    def ended_or_cancelled(self) -> tuple[Outcome | None, bool]:
        """(the outcome if one was already written, whether cancel was asked), in one round trip."""
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.lindex(self.keys.outcome(self.execution_id), 0)
            pipe.exists(self.keys.cancel_flag(self.execution_id))
            existing, cancelled = pipe.execute()
        return (Outcome.model_validate_json(existing) if existing else None), bool(cancelled)

    def cancel_requested(self) -> bool:
        return bool(self.connection.exists(self.keys.cancel_flag(self.execution_id)))

    # -- state changes -------------------------------------------------------

    def set_state(self, state: ExecutionState, *, check_cancel: bool = False, **meta: Any) -> bool:
        """Publish ``state`` on the events topic and mirror it (plus ``meta``) into the job.

        Advisory: a Redis failure is logged, not raised, so it never stops an
        execution. With ``check_cancel`` the cancel flag is read in the same
        round trip and returned, closing the window between the start check and
        the moment the control channel is being listened to.
        """
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                self._queue_state(pipe, state, meta)
                if check_cancel:
                    pipe.exists(self.keys.cancel_flag(self.execution_id))
                replies = pipe.execute()
        except RedisError as exc:
            log.warning("execution %s: state %s not published: %s", self.execution_id, state.value, exc)
            return False
        return bool(replies[-1]) if check_cancel else False

    def _queue_state(self, pipe: Pipeline, state: ExecutionState, meta: dict[str, Any]) -> None:
        event = Event(execution_id=self.execution_id, status=state, worker=self.worker)
        pipe.publish(self.keys.events, event.model_dump_json())
        if self.job is not None:
            self.job.meta.update({k: v for k, v in meta.items() if v is not None})
            self.job.meta.update(execution_id=self.execution_id, status=state.value, worker=self.worker)
            # Job.save_meta() without its own round trip: same field, same serializer.
            pipe.hset(self.job.key, "meta", self.job.serializer.dumps(self.job.meta))

    # -- Redis outages ----------------------------------------------------------

    def _unreachable(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()

    def _retry_left(self) -> float:
        """Seconds the writes of the end may still wait for Redis."""
        down_since = self._down_since
        return self.outcome_retry_seconds - (0.0 if down_since is None else time.monotonic() - down_since)

    @property
    def gave_up(self) -> bool:
        """Redis has been unreachable for outcome_retry_seconds: the writes of the end stop waiting."""
        return self._retry_left() <= 0

    def _with_retry(self, call: Callable[[], T], on_error: Callable[[Exception], None]) -> T:
        """``call()``, retried with backoff while Redis is unreachable; raises its last error
        once Redis has been unreachable for outcome_retry_seconds."""
        failures = 0
        while True:
            try:
                result = call()
            except _REDIS_DOWN as exc:
                self._unreachable()
                if self.gave_up:
                    raise
                failures += 1
                on_error(exc)
                time.sleep(max(0.0, min(OUTCOME_RETRY_BACKOFF.compute(failures), self._retry_left())))
            else:
                self._down_since = None
                return result

    # -- logs ----------------------------------------------------------------

    @property
    def entries_sent(self) -> int:
        return self._sent

    def resume_logs(self, entries_sent: int) -> None:
        """Continue a log that another worker started (adoption): ``seq`` goes on from ``entries_sent``."""
        with self._log_lock:
            self._sent = max(self._sent, entries_sent)

    def send_logs(self, entries: Sequence[LogEntry], *, keep_trying: threading.Event | None = None) -> bool:
        """Ship one batch to the live topic and the replay stream, in one round trip.

        Retries while Redis is unreachable so ``seq`` never has a gap; gives up
        (returns False, nothing counted) once ``keep_trying`` is cleared or eof was sent.
        """
        if not entries:
            return True
        with self._log_lock:
            if self._eof:
                return False
            batch = LogBatch(seq=self._sent, entries=list(entries))
            retry = Retry(LOG_RETRY_BACKOFF, retries=-1)
            try:
                retry.call_with_retry(
                    lambda: self._ship(batch),
                    self._log_not_shipped,
                    is_retryable=lambda _exc: keep_trying is None or keep_trying.is_set(),
                )
            finally:
                self._logs_stalled = False
            self._down_since = None
            self._sent += len(entries)
            return True

    def _log_not_shipped(self, exc: Exception) -> None:
        self._logs_stalled = True
        self._unreachable()
        log.warning("execution %s: log batch not shipped yet: %s", self.execution_id, exc)

    @property
    def logs_stalled(self) -> bool:
        """A log batch is waiting for Redis to come back (the shipper is not idle, it is blocked),
        and Redis has not been unreachable for outcome_retry_seconds yet."""
        return self._logs_stalled and not self.gave_up

    def send_eof(self) -> None:
        """The last log message, ``{"seq": total, "eof": true}``; later batches are dropped."""
        with self._log_lock:
            if self._eof:
                return
            self._eof = True
            batch = LogBatch(seq=self._sent, eof=True)
        try:
            self._with_retry(lambda: self._ship(batch), lambda exc: None)
        except Exception as exc:  # noqa: BLE001 - the outcome still matters more than eof
            log.error("execution %s: could not send log eof: %s", self.execution_id, exc)

    def _ship(self, batch: LogBatch) -> None:
        payload = batch.to_json()
        stream = self.keys.log_stream(self.execution_id)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.publish(self.keys.logs_channel(self.execution_id), payload)
            pipe.xadd(stream, {"batch": payload}, maxlen=self.log_stream_maxlen, approximate=True)
            pipe.expire(stream, self.retention_seconds)
            pipe.execute()

    # -- the end ---------------------------------------------------------------

    def finish(self, outcome: Outcome, **meta: Any) -> bool:
        """Write the outcome (first writer wins) and, if it was ours, the final event.

        Retries through Redis outages with the outcome kept in memory. Returns
        True when this call's outcome is the one stored. Raises the last Redis
        error once Redis has been unreachable for outcome_retry_seconds.
        """
        payload = outcome.model_dump_json()
        written = self._with_retry(
            lambda: self._store_outcome(payload),
            lambda exc: log.warning("execution %s: outcome not written yet: %s", self.execution_id, exc),
        )
        if written:
            if self.acks:  # DOCKRQ_REPLICA_ACKS; a failover mid-way: written again (first writer wins) and confirmed
                self._with_retry(
                    lambda: confirm_outcome(self.acks, self.connection, self.execution_id, lambda: self._store_outcome(payload)),
                    lambda exc: log.warning("execution %s: outcome not confirmed by replicas yet: %s", self.execution_id, exc),
                )
            self.set_state(ExecutionState(outcome.status.value), **meta)
        return written

    def _store_outcome(self, payload: str) -> bool:
        key = self.keys.outcome(self.execution_id)
        if self._write_outcome(keys=[key], args=[payload, self.retention_seconds]):
            return True
        # Lost the race -- or won it on an attempt whose reply a dropped connection ate.
        existing = self.connection.lindex(key, 0)
        if isinstance(existing, bytes):
            existing = existing.decode()
        return existing == payload
