"""Reading one execution's log: history from the capped stream, then live pub/sub.

The worker appends every batch to the stream ``P:exec:ID:log`` and publishes
the same batch on ``P:exec:ID:logs``. Pub/sub alone loses whatever was sent
before we subscribed; the stream alone would mean polling. So a follower
subscribes first, reads the stream, then takes live messages, and the batch
``seq`` (entries sent before the batch) turns the overlap into exact
deduplication. A live batch that starts past what we have means messages were
missed (slow consumer, reconnect): the stream is read again from the last id
we saw. Entries the stream no longer holds (it is capped) are skipped over, so
a reader never stalls on a gap that cannot be filled.

Once an execution has ended, its worker may have replaced the stream with the
compact log ``P:exec:ID:logz`` (``schemas.compact_log``): wherever the stream is
found missing, the reader reads that one string instead (the same batches, by
``seq``), so history, follow and catch-up work across the switch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import redis
from redis.client import PubSub

from schemas import LogBatch, LogEntry
from schemas.compact_log import read_compact_log
from schemas.connections import BLOCK_SLICE_SECONDS, BLOCKING_SOCKET_TIMEOUT, REDIS_DOWN, ride_out_outage

from .tail import tail_lines

log = logging.getLogger(__name__)

_PAGE = 500
GAP_RECHECK_SECONDS = 0.05


class AttemptStart(LogEntry):
    """Not output: where attempt ``attempt`` (2 or later) of a retried execution begins in the
    log (its marker batch). ``data`` is empty and ``stream`` is ``stderr``, so code that prints
    entries prints nothing for it."""

    attempt: int


@dataclass
class LogCursor:
    """How far a reader has got: the next entry ``seq`` it wants and the last stream id it read."""

    next_seq: int = 0
    last_id: bytes = b"0-0"
    eof: bool = False
    attempt: int = 1  # the newest attempt marker seen (each is yielded once)

    def take(self, batch: LogBatch, *, skip_gap: bool) -> list[LogEntry] | None:
        """The entries of ``batch`` not yet seen, or None when it starts past ``next_seq``.

        With ``skip_gap`` the missing entries are given up on (they are gone from
        the stream) and the batch is taken as it is.
        """
        if batch.seq > self.next_seq:
            if not skip_gap:
                return None
            log.debug("log gap: entries %d..%d are gone", self.next_seq, batch.seq - 1)
            self.next_seq = batch.seq
        fresh = batch.entries[self.next_seq - batch.seq :]
        self.next_seq += len(fresh)
        if batch.eof:
            self.eof = True
        if batch.attempt is not None and batch.attempt > self.attempt:
            self.attempt = batch.attempt
            marker = AttemptStart(stream="stderr", ts=batch.ts or 0.0, data="", attempt=batch.attempt)
            return [marker, *fresh]
        return fresh


class LogReader:
    """Iterates the entries of one execution; ``tail`` and ``follow`` as in ``docker logs``.

    ``tail``: True for the whole history, False or 0 for none, N for the last N
    lines of the combined output, however they were chunked (``docker logs --tail``). ``follow``: keep reading live until the eof batch, or until
    ``is_over()`` says the execution ended without one (rejected, cancelled
    before start, worker lost), so a follower never hangs.
    """

    def __init__(
        self,
        client: redis.Redis,
        blocking: redis.Redis,
        stream_key: str,
        channel: str,
        *,
        tail: bool | int = True,
        follow: bool = True,
        is_over: Callable[[], bool],
        slice_seconds: float = BLOCK_SLICE_SECONDS,
        compact_key: str | None = None,
    ) -> None:
        self._client = client
        self._blocking = blocking
        self._stream = stream_key
        self._channel = channel
        self._tail = _entries_wanted(tail)
        self._follow = follow
        self._is_over = is_over
        self._slice = slice_seconds
        self._compact_key = compact_key
        self.cursor = LogCursor()

    def __iter__(self) -> Iterator[LogEntry]:
        pubsub = self._subscribe() if self._follow else None
        try:
            yield from self._history()
            if pubsub is not None and not self.cursor.eof:
                yield from self._live(pubsub)
        finally:
            if pubsub is not None:
                pubsub.close()

    # -- history -----------------------------------------------------------

    def _history(self) -> Iterator[LogEntry]:
        wanted = self._tail
        if wanted is None:
            yield from self._catch_up()
            return
        # The newest batches, read backwards a page at a time until they hold the last
        # ``wanted`` lines (producer.tail: lines, not entries, as docker logs --tail).
        newest_first: list[tuple[bytes, LogBatch]] = []
        upper = "+"
        while True:
            page = self._client.xrevrange(self._stream, upper, "-", count=_PAGE if wanted else 1)
            newest_first.extend((entry_id, LogBatch.from_stream_entry(fields)) for entry_id, fields in page)
            exhausted = len(page) < (_PAGE if wanted else 1)
            if not newest_first:
                yield from self._compact_tail(wanted)
                return
            entries = _entries_of(reversed(newest_first))
            kept, sure = tail_lines(entries, wanted)
            if not page or sure or exhausted or not wanted:
                break
            upper = "(" + page[-1][0].decode()
        newest_id, newest = newest_first[0]
        self.cursor.next_seq = newest.seq + len(newest.entries)
        self.cursor.eof = any(batch.eof for _, batch in newest_first)
        self.cursor.last_id = newest_id
        yield from kept

    def _compact_tail(self, wanted: int) -> Iterator[LogEntry]:
        """The last ``wanted`` lines of an ended log whose stream was replaced by the compact key."""
        compact = self._compact()
        if not compact:
            return
        kept, _ = tail_lines(_entries_of((b"", batch) for batch in compact), wanted)
        self.cursor.next_seq = compact[-1].seq + len(compact[-1].entries)
        self.cursor.eof = any(batch.eof for batch in compact)
        yield from kept

    def _catch_up(self) -> Iterator[LogEntry]:
        """Everything the stream holds after the last id read, deduplicated by seq."""
        first = True
        while not self.cursor.eof:
            page = self._client.xrange(self._stream, "(" + self.cursor.last_id.decode(), "+", count=_PAGE)
            if first and not page:
                compact = self._compact()
                if compact is not None:
                    for batch in compact:
                        yield from self.cursor.take(batch, skip_gap=True) or ()
                    return
            first = False
            for entry_id, fields in page:
                self.cursor.last_id = entry_id
                yield from self.cursor.take(LogBatch.from_stream_entry(fields), skip_gap=True) or ()
                if self.cursor.eof:
                    return
            if len(page) < _PAGE:
                return

    def _compact(self) -> list[LogBatch] | None:
        """The ended log's batches, when the stream was replaced by the compact key."""
        if self._compact_key is None or self._client.exists(self._stream):
            return None
        return read_compact_log(self._client, self._compact_key)

    # -- live --------------------------------------------------------------

    def _subscribe(self) -> PubSub:
        """Subscribe and wait for Redis to confirm, so nothing published after the history read is lost."""
        pubsub = self._blocking.pubsub()
        pubsub.subscribe(self._channel)
        deadline = time.monotonic() + BLOCKING_SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=self._slice)
            if message is not None and message["type"] == "subscribe":
                return pubsub
        pubsub.close()
        raise redis.TimeoutError(f"no subscribe confirmation for {self._channel}")

    def _live(self, pubsub: PubSub) -> Iterator[LogEntry]:
        while not self.cursor.eof:
            # PubSub reconnects and resubscribes on its next read; what was published
            # while Redis was away is recovered from the stream by the gap check.
            entries, ended = ride_out_outage(lambda: self._next_live(pubsub), _follow_interrupted)
            yield from entries
            if ended:
                return

    def _next_live(self, pubsub: PubSub) -> tuple[list[LogEntry], bool]:
        """The entries of the next live message (none on an idle slice), and whether the execution
        ended without an eof batch. All or nothing: a Redis error leaves the cursor as it was."""
        saved = replace(self.cursor)
        try:
            message = pubsub.get_message(timeout=self._slice)
            if message is None:
                # Ended: whatever was written before the outcome is in the stream.
                ended = self._is_over()
                return (list(self._catch_up()) if ended else []), ended
            if message["type"] != "message":
                return [], False
            batch = LogBatch.model_validate_json(message["data"])
            fresh = self.cursor.take(batch, skip_gap=False)
            caught_up: list[LogEntry] = []
            # Missed messages: read them from the stream; look twice, since a
            # writer may publish a batch a moment before its XADD lands.
            for pause in (0.0, GAP_RECHECK_SECONDS):
                if fresh is not None:
                    break
                time.sleep(pause)
                caught_up += self._catch_up()
                fresh = self.cursor.take(batch, skip_gap=False)
            return caught_up + (fresh if fresh is not None else self.cursor.take(batch, skip_gap=True) or []), False
        except REDIS_DOWN:
            self.cursor = saved
            raise


def _follow_interrupted(exc: Exception, failures: int) -> None:
    log.warning("log follow: Redis error (%s); retrying", exc)


def _entries_of(batches: Iterable[tuple[bytes, LogBatch]]) -> list[LogEntry]:
    """The entries of ``batches`` (oldest first) in order, each once (by ``seq``), over any gap."""
    cursor: LogCursor | None = None
    entries: list[LogEntry] = []
    for _, batch in batches:
        if cursor is None:
            cursor = LogCursor(next_seq=batch.seq)
        entries.extend(cursor.take(batch, skip_gap=True) or ())
    return entries


def _entries_wanted(tail: bool | int) -> int | None:
    """None for the whole history, else how many of the last lines to replay."""
    if tail is True:
        return None
    if tail is False:
        return 0
    if isinstance(tail, int) and tail >= 0:
        return tail
    raise ValueError(f"tail must be True, False or a number of lines >= 0, not {tail!r}")
