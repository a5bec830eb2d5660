"""Moving an execution's log from the executor to Redis: ``LogShipper``, and resuming a log
another worker started (``LogResume``, ``ResumedSource``) for adoption.

The shipper reads the executor's log stream in batches and hands each to
``ExecutionChannels.send_logs`` (one pipeline per batch: the live topic and the
replay stream). An adopter continues where the dead worker stopped: it counts
what the ``P:exec:ID:log`` stream already holds (per stream, by characters; by
entries when the capped stream lost its start) and skips that much of the
container's replayed output, so followers see no gap and no duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from schemas import LogBatch, LogEntry, LogStreamRequest
from schemas.compact_log import read_compact_log
from worker.executor import ExecutionNotFound
from worker.executor.threads import REUSE, Ran

if TYPE_CHECKING:
    import redis

    from worker.execution.channels import ExecutionChannels

log = logging.getLogger(__name__)

# Log batches: at most this many entries, waiting at most this long for the first one.
LOG_BATCH_ENTRIES = 500
LOG_BATCH_WAIT_SECONDS = 0.05
# After the result, the log shipper may keep going while it makes progress; give up after this idle time
# (but while a batch waits for Redis to come back, it keeps waiting, as long as the outcome would).
LOG_DRAIN_IDLE_SECONDS = 5.0
_PAGE = 500


class BatchReader(Protocol):
    """What the shipper reads: ``worker.executor.LogStream`` (or one that skips a prefix of it)."""

    def read_batch(self, max_entries: int = 512, timeout: float | None = None) -> list[LogEntry] | None: ...


class LogSource(Protocol):
    """Where the shipper gets its stream: the ``DockerExecutor``, or a ``ResumedSource`` over it."""

    def get_log_stream(self, request: LogStreamRequest) -> BatchReader: ...


class LogShipper:
    """Moves one execution's log entries from the executor to Redis, in batches, on a thread
    of its own (``start``; a reused one, worker.executor.threads; ``is_alive``/``join`` as a Thread's)."""

    def __init__(self, channels: ExecutionChannels, source: LogSource, execution_id: str) -> None:
        self.name = f"dockrq-logs-{execution_id}"
        self._ran: Ran | None = None
        self.channels = channels
        self.source = source
        self.execution_id = execution_id
        self._keep_going = threading.Event()
        self._keep_going.set()

    def start(self) -> None:
        self._ran = REUSE.run(self.run, self.name)

    def is_alive(self) -> bool:
        return self._ran is not None and self._ran.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._ran is not None:
            self._ran.join(timeout)

    def run(self) -> None:
        try:
            stream = self.source.get_log_stream(LogStreamRequest(execution_id=self.execution_id, tail=True, follow=True))
        except ExecutionNotFound:
            return
        try:
            while self._keep_going.is_set():
                batch = stream.read_batch(LOG_BATCH_ENTRIES, LOG_BATCH_WAIT_SECONDS)
                if batch is None:
                    return
                if batch and not self.channels.send_logs(batch, keep_trying=self._keep_going):
                    return
        except Exception:  # noqa: BLE001 - logs are best effort; the outcome is not
            if self._keep_going.is_set():
                log.exception("execution %s: log shipping stopped", self.execution_id)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with suppress(Exception):
                    close()

    def drain(self) -> None:
        """Wait for the remaining logs while they still move; then stop."""
        last, idle_since = self.channels.entries_sent, time.monotonic()
        while self.is_alive() and time.monotonic() - idle_since < LOG_DRAIN_IDLE_SECONDS:
            self.join(0.2)
            if getattr(self.channels, "gave_up", False):
                break  # Redis has been unreachable for outcome_retry_seconds: the outcome gives up too
            stalled = getattr(self.channels, "logs_stalled", False)  # a batch waits for Redis
            if self.channels.entries_sent != last or stalled:
                last, idle_since = self.channels.entries_sent, time.monotonic()
        if self.is_alive():
            log.warning("execution %s: log stream did not end; closing it", self.execution_id)
        self._keep_going.clear()


# -- resuming another worker's log (adoption) ---------------------------------------------


@dataclass(frozen=True)
class LogResume:
    """How far the predecessor got publishing the log: entries sent, and characters per stream.

    ``chars`` is None when the replay stream no longer holds the first batches
    (it is capped): then the first ``entries`` replayed entries are skipped.
    """

    entries: int = 0
    chars: dict[str, int] | None = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    attempt_start: int = 0  # seq where the running attempt began (its marker); its container's output starts there
    ended: bool = False  # the predecessor already ended the log as a compact string: ship nothing more

    @classmethod
    def read(cls, connection: redis.Redis, stream: str, compact: str | None = None) -> LogResume:
        """What ``stream`` holds; with no stream, the ended log at ``compact`` (schemas.compact_log) if any."""
        last = connection.xrevrange(stream, "+", "-", count=1)
        if not last:
            ended = read_compact_log(connection, compact) if compact is not None else None
            if ended is None:
                return cls()
            chars = {"stdout": 0, "stderr": 0}
            for e in (e for b in ended for e in b.entries):
                chars[e.stream] += len(e.data)
            return cls(entries=ended[-1].seq + len(ended[-1].entries), chars=chars, ended=True)
        newest = LogBatch.from_stream_entry(last[0][1])
        entries = newest.seq + len(newest.entries)
        chars = {"stdout": 0, "stderr": 0}
        after, expected, complete, attempt_start = "-", 0, True, 0
        while True:
            page = connection.xrange(stream, after, "+", count=_PAGE)
            for entry_id, fields in page:
                batch = LogBatch.from_stream_entry(fields)
                if batch.seq != expected:  # the start was trimmed away: count entries instead
                    complete, expected = False, batch.seq
                if batch.attempt is not None:  # a retry's attempt begins: its container's output starts here
                    chars, complete, attempt_start = {"stdout": 0, "stderr": 0}, True, batch.seq
                expected += len(batch.entries)
                for e in batch.entries:
                    chars[e.stream] += len(e.data)
                after = "(" + entry_id.decode()
            if len(page) < _PAGE:
                return cls(entries=entries, chars=chars if complete else None, attempt_start=attempt_start)


class SkippingStream:
    """A log stream minus what was already shipped."""

    def __init__(self, inner: BatchReader, resume: LogResume) -> None:
        self._inner = inner
        self._skip_entries = resume.entries - resume.attempt_start if resume.chars is None else 0
        self._skip_chars = dict(resume.chars or {})

    def read_batch(self, max_entries: int = 512, timeout: float | None = None) -> list[LogEntry] | None:
        batch = self._inner.read_batch(max_entries, timeout)
        if batch is None:
            return None
        out = []
        for entry in batch:
            if self._skip_entries:
                self._skip_entries -= 1
                continue
            left = self._skip_chars.get(entry.stream, 0)
            if left:
                if len(entry.data) <= left:
                    self._skip_chars[entry.stream] = left - len(entry.data)
                    continue
                self._skip_chars[entry.stream] = 0
                entry = LogEntry(stream=entry.stream, ts=entry.ts, data=entry.data[left:])
            out.append(entry)
        return out

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class ResumedSource:
    """What the shipper of an adopted execution reads from: the executor, with the already-shipped part skipped."""

    def __init__(self, source: LogSource, resume: LogResume) -> None:
        self._source = source
        self._resume = resume

    def get_log_stream(self, request: LogStreamRequest) -> SkippingStream:
        return SkippingStream(self._source.get_log_stream(request), self._resume)
