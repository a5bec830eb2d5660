"""Reading one execution's log without I/O: the steps both log readers take.

``producer.logs.LogReader`` (redis-py) and ``producer.aio_logs.AsyncLogReader``
(redis.asyncio) follow one algorithm (``producer.logs``' module doc), written
once here as generators over a ``LogCursor``. A step yields what it needs done
and gets the answer sent back in:

- ``Command(name, args, kwargs)``: one Redis command on the reader's client
  (``getattr(client, name)(*args, **kwargs)``), answered with its reply;
- ``Pause(seconds)``: sleep, answered with None;
- ``NEXT_MESSAGE``: one read of the reader's subscription for one slice
  (``PubSub.get_message(timeout=slice)``), answered with the message or None;
- ``IS_OVER``: the reader's ``is_over()``, answered with its bool.

It also yields each ``LogEntry`` for the caller (answered with None: ``is_entry``),
and returns its result. A reader is only the driver that carries the requests
out (``producer.steps``): ``producer.logs`` on redis-py, ``producer.aio_logs`` on
redis.asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from schemas import LogBatch, LogEntry
from schemas.compact_log import compact_log_or_none

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


@dataclass(frozen=True)
class Command:
    """One Redis command for the driver to send on the reader's client."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pause:
    """Sleep ``seconds`` (``time.sleep`` / ``asyncio.sleep``)."""

    seconds: float


NEXT_MESSAGE = "next message"  # one read of the subscription, for one slice
IS_OVER = "is over"  # the reader's is_over()

Request = Command | Pause | str
R = TypeVar("R")
Steps = Generator["Request | LogEntry", Any, R]


def is_entry(item: object) -> bool:
    """Whether a step's yield is an entry for the caller (else a request)."""
    return isinstance(item, LogEntry)


@dataclass(frozen=True)
class LogSource:
    """Where one execution's log is: its stream and, once ended, maybe its compact log."""

    stream_key: str
    compact_key: str | None = None


def history(src: LogSource, cursor: LogCursor, wanted: int | None) -> Steps[None]:
    """The whole history (``wanted`` None) or its last ``wanted`` lines (``producer.tail``: lines,
    not entries, as ``docker logs --tail``); the cursor ends past what was read."""
    if wanted is None:
        yield from catch_up(src, cursor)
        return
    # The newest batches, read backwards a page at a time until they hold the last ``wanted`` lines.
    newest_first: list[tuple[bytes, LogBatch]] = []
    upper = "+"
    while True:
        page = yield Command("xrevrange", (src.stream_key, upper, "-"), {"count": _PAGE if wanted else 1})
        newest_first.extend((entry_id, LogBatch.from_stream_entry(fields)) for entry_id, fields in page)
        exhausted = len(page) < (_PAGE if wanted else 1)
        if not newest_first:
            yield from _compact_tail(src, cursor, wanted)
            return
        kept, sure = tail_lines(_entries_of(reversed(newest_first)), wanted)
        if not page or sure or exhausted or not wanted:
            break
        upper = "(" + page[-1][0].decode()
    newest_id, newest = newest_first[0]
    cursor.next_seq = newest.seq + len(newest.entries)
    cursor.eof = any(batch.eof for _, batch in newest_first)
    cursor.last_id = newest_id
    yield from kept


def _compact_tail(src: LogSource, cursor: LogCursor, wanted: int) -> Steps[None]:
    """The last ``wanted`` lines of an ended log whose stream was replaced by the compact key."""
    compact = yield from _compact(src)
    if not compact:
        return
    kept, _ = tail_lines(_entries_of((b"", batch) for batch in compact), wanted)
    cursor.next_seq = compact[-1].seq + len(compact[-1].entries)
    cursor.eof = any(batch.eof for batch in compact)
    yield from kept


def catch_up(src: LogSource, cursor: LogCursor) -> Steps[None]:
    """Everything the stream holds after the last id read, deduplicated by seq."""
    first = True
    while not cursor.eof:
        page = yield Command("xrange", (src.stream_key, "(" + cursor.last_id.decode(), "+"), {"count": _PAGE})
        if first and not page:
            compact = yield from _compact(src)
            if compact is not None:
                for batch in compact:
                    yield from cursor.take(batch, skip_gap=True) or ()
                return
        first = False
        for entry_id, fields in page:
            cursor.last_id = entry_id
            yield from cursor.take(LogBatch.from_stream_entry(fields), skip_gap=True) or ()
            if cursor.eof:
                return
        if len(page) < _PAGE:
            return


def _compact(src: LogSource) -> Steps[list[LogBatch] | None]:
    """The ended log's batches, when the stream was replaced by the compact key."""
    if src.compact_key is None or (yield Command("exists", (src.stream_key,))):
        return None
    return compact_log_or_none((yield Command("get", (src.compact_key,))))


def next_live(src: LogSource, cursor: LogCursor) -> Steps[bool]:
    """The entries of the next live message (none on an idle slice); returns whether the
    execution ended without an eof batch (then whatever it wrote is read from the stream)."""
    message = yield NEXT_MESSAGE
    if message is None:
        ended = yield IS_OVER
        if ended:
            yield from catch_up(src, cursor)
        return bool(ended)
    if message["type"] != "message":
        return False
    batch = LogBatch.model_validate_json(message["data"])
    fresh = cursor.take(batch, skip_gap=False)
    # Missed messages: read them from the stream; look twice, since a
    # writer may publish a batch a moment before its XADD lands.
    for pause in (0.0, GAP_RECHECK_SECONDS):
        if fresh is not None:
            break
        yield Pause(pause)
        yield from catch_up(src, cursor)
        fresh = cursor.take(batch, skip_gap=False)
    yield from fresh if fresh is not None else cursor.take(batch, skip_gap=True) or ()
    return False


def _entries_of(batches: Iterable[tuple[bytes, LogBatch]]) -> list[LogEntry]:
    """The entries of ``batches`` (oldest first) in order, each once (by ``seq``), over any gap."""
    cursor: LogCursor | None = None
    entries: list[LogEntry] = []
    for _, batch in batches:
        if cursor is None:
            cursor = LogCursor(next_seq=batch.seq)
        entries.extend(cursor.take(batch, skip_gap=True) or ())
    return entries


def entries_wanted(tail: bool | int) -> int | None:
    """None for the whole history, else how many of the last lines to replay."""
    if tail is True:
        return None
    if tail is False:
        return 0
    if isinstance(tail, int) and tail >= 0:
        return tail
    raise ValueError(f"tail must be True, False or a number of lines >= 0, not {tail!r}")

