"""The Redis side of one execution: what a worker writes so producers can follow it.

Everything here speaks the wire contract of ``schemas.wire`` and nothing else:
the outcome list (written once, first writer wins), the live log topic plus its
capped replay stream (one pipeline per batch, so both always carry the same
``seq``), the compact log an ended small log becomes (``worker.execution.log_compaction``),
the global events topic and the rq job's ``meta``. Each state change
is one round trip; the per-execution overhead budget is a few milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from schemas import (
    LOG_STREAM_FIELD,
    WRITE_OUTCOME_LUA,
    Event,
    ExecutionState,
    Keys,
    LogBatch,
    LogEntry,
    Outcome,
    attempts_from_meta,
)
from schemas.connections import WRITE_BACKOFF, OutageBudget, commands_within, ride_out_outage, within_budget
from worker.config.settings import DEFAULT_OUTCOME_RETRY_SECONDS
from worker.execution.log_compaction import LogKeeper
from worker.execution.replicated import ReplicaAcks, confirm_outcome
from worker.observe import metrics

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline
    from rq.job import Job

log = logging.getLogger(__name__)

T = TypeVar("T")

# Redis hiccups (restart, failover) are retried with capped, jittered backoff (WRITE_BACKOFF) until
# Redis has been unreachable for ``outcome_retry_seconds`` (DOCKRQ_OUTCOME_RETRY_SECONDS):
# then the outcome write gives up and raises, and the worker settles the job once
# Redis is back (worker.faults.outage).


def never_created(outcome: Outcome) -> bool:
    """Whether ``outcome`` (final: written once, no attempt after it) ends an execution with no
    container result: rejected, cancelled or failed before its container was created, lost. Its
    input archive (``P:exec:ID:inputs``) is then deleted by the outcome's write (WRITE_OUTCOME_LUA's
    KEYS[3]) instead of staying for the retention."""
    return outcome.result is None or outcome.result.container_id is None


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
        log_retention_seconds: int | None = None,
        acks: ReplicaAcks | None = None,
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.execution_id = execution_id
        self.worker = worker
        self.retention_seconds = int(retention_seconds)
        self.log_stream_maxlen = log_stream_maxlen
        # DOCKRQ_LOG_RETENTION_SECONDS: the log's stream or compact string lives this long (default: the retention)
        self.log_retention_seconds = int(log_retention_seconds or retention_seconds)
        self._keeper = LogKeeper()
        self.job = job
        self.outcome_retry_seconds = outcome_retry_seconds
        self.acks = acks  # DOCKRQ_REPLICA_ACKS: the outcome write is confirmed by replicas (WAIT)
        # One clock for the log batches, the eof and the outcome, so an ending waits for
        # Redis about outcome_retry_seconds in all, not that long for each of them.
        self.budget = OutageBudget(outcome_retry_seconds)
        self._write_outcome = connection.register_script(WRITE_OUTCOME_LUA)
        self._log_lock = threading.Lock()
        self._sent = 0  # log entries shipped so far: the next batch's seq
        self._logs_stalled = False
        self._eof = False
        self._ending_status: str | None = None
        self._never_ran = False

    # -- start-of-run checks -------------------------------------------------

    def through_outage(self, read: Callable[[], T]) -> T:
        """``read()``, retried while Redis is away, within the execution's outage budget
        (``DOCKRQ_OUTCOME_RETRY_SECONDS``, shared with its writes): a restart or failover
        just as a worker takes a job delays its start instead of ending it ``error``.
        Raises the last of REDIS_DOWN once the budget is spent."""

        def away(exc: Exception) -> None:
            log.warning("execution %s: Redis unreachable before the start (%s); retrying", self.execution_id, exc)

        return within_budget(read, self.budget, away, backoff=WRITE_BACKOFF)

    def ended_or_cancelled(self) -> tuple[Outcome | None, bool]:
        """(the outcome if one was already written, whether cancel was asked): one ``EXISTS`` of
        both keys, and when either is there, a second round trip to tell which."""
        if not self.connection.exists(self.keys.outcome(self.execution_id), self.keys.cancel_flag(self.execution_id)):
            return None, False
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

    @property
    def gave_up(self) -> bool:
        """Redis has been unreachable for outcome_retry_seconds: the writes of the end stop waiting."""
        return self.budget.spent

    # -- logs ----------------------------------------------------------------

    @property
    def entries_sent(self) -> int:
        return self._sent

    def resume_logs(self, entries_sent: int, *, ended: bool = False) -> None:
        """Continue a log that another worker started (adoption): ``seq`` goes on from ``entries_sent``.

        That log ends in its stream (it is not compacted). ``ended``: the predecessor already
        ended it (a compact log exists), so nothing more is shipped, eof included.
        """
        with self._log_lock:
            self._sent = max(self._sent, entries_sent)
            if entries_sent:
                self._keeper.give_up()
            if ended:
                self._eof = True

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
            try:
                # Each try's own command retry round ends with the budget (so the clock starts at
                # the first failed command, and a spent budget is seen at once by the end's writes).
                with commands_within(self.budget):
                    ride_out_outage(
                        lambda: self._ship(batch),
                        self._log_not_shipped,
                        backoff=WRITE_BACKOFF,
                        keep_trying=None if keep_trying is None else keep_trying.is_set,
                    )
            finally:
                self._logs_stalled = False
            self.budget.answered()
            self._keeper.shipped(batch)
            self._sent += len(entries)
            return True

    def _log_not_shipped(self, exc: Exception, failures: int) -> None:
        self._logs_stalled = True
        self.budget.failed()
        log.warning("execution %s: log batch not shipped yet: %s", self.execution_id, exc)

    @property
    def logs_stalled(self) -> bool:
        """A log batch is waiting for Redis to come back (the shipper is not idle, it is blocked),
        and Redis has not been unreachable for outcome_retry_seconds yet."""
        return self._logs_stalled and not self.gave_up

    def send_eof(self) -> None:
        """The last log message, ``{"seq": total, "eof": true}``; later batches are dropped.

        A small log this worker shipped whole ends as the compact string ``P:exec:ID:logz``
        (its stream deleted) rather than with the eof batch appended to its stream.
        """
        with self._log_lock:
            if self._eof:
                return
            self._eof = True
            batch = LogBatch(seq=self._sent, eof=True)
        try:
            within_budget(lambda: self._ship(batch), self.budget, backoff=WRITE_BACKOFF)
        except Exception as exc:  # noqa: BLE001 - the outcome still matters more than eof
            log.error("execution %s: could not send log eof: %s", self.execution_id, exc)

    def send_marker(self, batch: LogBatch) -> None:
        """A batch without entries (an attempt marker, worker.execution.retries) at the current ``seq``."""
        with self._log_lock:
            if self._eof:
                return
        try:
            within_budget(lambda: self._ship(batch), self.budget, backoff=WRITE_BACKOFF)
        except RedisError as exc:  # a marker is a hint; the attempt goes on
            log.warning("execution %s: log marker not sent: %s", self.execution_id, exc)

    def _ship(self, batch: LogBatch) -> None:
        """One batch to the topic and the stream; the eof of a log kept whole ends it compact instead:
        SET the compact log, DEL the stream, then PUBLISH eof (one pipeline, in this order)."""
        payload = batch.to_json()
        stream = self.keys.log_stream(self.execution_id)
        with self.connection.pipeline(transaction=False) as pipe:
            if batch.eof and self._keeper.queue_end(
                pipe, batch, self.keys.log_compact(self.execution_id), stream, self.log_retention_seconds
            ):
                pipe.publish(self.keys.logs_channel(self.execution_id), payload)
                pipe.execute()
                return
            pipe.publish(self.keys.logs_channel(self.execution_id), payload)
            pipe.xadd(stream, {LOG_STREAM_FIELD: payload}, maxlen=self.log_stream_maxlen, approximate=True)
            pipe.expire(stream, self.log_retention_seconds)
            pipe.execute()

    # -- the end ---------------------------------------------------------------

    def finish(self, outcome: Outcome, **meta: Any) -> bool:
        """Write the outcome (first writer wins) and, if it was ours, the final event.

        Retries through Redis outages with the outcome kept in memory. Returns
        True when this call's outcome is the one stored. Raises the last Redis
        error once Redis has been unreachable for outcome_retry_seconds.
        """
        if self.job is not None:  # a retried execution's: the last attempt's, with the earlier ones
            outcome = outcome.with_attempts(*attempts_from_meta(self.job.meta))
        payload = outcome.model_dump_json()
        self._ending_status = outcome.status.value  # which status index _store_outcome adds the id to
        self._never_ran = never_created(outcome)  # its input archive is deleted with the write
        written = within_budget(
            lambda: self._store_outcome(payload),
            self.budget,
            self._outcome_not_written,
            backoff=WRITE_BACKOFF,
        )
        if written:
            if self.acks:  # DOCKRQ_REPLICA_ACKS; a failover mid-way: written again (first writer wins) and confirmed
                within_budget(
                    lambda: confirm_outcome(self.acks, self.connection, self.execution_id, lambda: self._store_outcome(payload)),
                    self.budget,
                    lambda exc: log.warning("execution %s: outcome not confirmed by replicas yet: %s", self.execution_id, exc),
                    backoff=WRITE_BACKOFF,
                )
            metrics.outcome_written(outcome)
            self.set_state(
                ExecutionState(outcome.status.value), exit_code=outcome.exit_code,
                error_code=outcome.error.code if outcome.error else None, **meta,
            )
        return written

    def _outcome_not_written(self, exc: Exception) -> None:
        metrics.outcome_write_retried()
        log.warning("execution %s: outcome not written yet: %s", self.execution_id, exc)

    def _store_outcome(self, payload: str) -> bool:
        key = self.keys.outcome(self.execution_id)
        keys, args = [key], [payload, self.retention_seconds]
        origin, status = getattr(self.job, "origin", None), self._ending_status
        if isinstance(origin, str) and origin and status:  # the status index of the job's queue (P:ended:QUEUE:STATUS), written by the same script
            keys.append(self.keys.ended(origin, status))
            args += [self.execution_id, time.time()]
        if self._never_ran:  # KEYS[3]: the input archive no attempt will read (an empty KEYS[2]: no index)
            if len(keys) == 1:
                keys.append("")
                args += ["", 0]
            keys.append(self.keys.inputs(self.execution_id))
        if self._write_outcome(keys=keys, args=args):
            return True
        # Lost the race -- or won it on an attempt whose reply a dropped connection ate.
        existing = self.connection.lindex(key, 0)
        if isinstance(existing, bytes):
            existing = existing.decode()
        return existing == payload
