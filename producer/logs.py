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

Redis away is ridden out from the first read on: the subscription and every history read
until Redis is back when following (as the live part always was), within
``retry_seconds`` (``producer.reaching``) when only reading the history.

The algorithm is ``producer.log_steps`` (without I/O, shared with the asyncio
reader ``producer.aio_logs``); ``LogReader`` carries its requests out on redis-py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import redis
from redis.client import PubSub

from schemas import LogEntry
from schemas.connections import BLOCK_SLICE_SECONDS, BLOCKING_SOCKET_TIMEOUT, REDIS_DOWN, ride_out_outage

from .log_steps import (  # noqa: F401 - AttemptStart, LogCursor: importable from here, where they lived
    IS_OVER,
    NEXT_MESSAGE,
    AttemptStart,
    Command,
    LogCursor,
    LogSource,
    Pause,
    Request,
    entries_wanted,
    history,
    is_entry,
    next_live,
)
from .reaching import DEFAULT_REDIS_RETRY_SECONDS, first_reads
from .steps import collect, drive

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
    ) -> None:
        self._client = client
        self._blocking = blocking
        self._source = LogSource(stream_key, compact_key)
        self._channel = channel
        self._tail = entries_wanted(tail)
        self._follow = follow
        self._is_over = is_over
        self._slice = slice_seconds
        self._retry_seconds = retry_seconds
        self.cursor = LogCursor()

    def __iter__(self) -> Iterator[LogEntry]:
        pubsub = self._ride_out(self._subscribe) if self._follow else None
        try:
            yield from drive(history(self._source, self.cursor, self._tail), self._doer(None, ride=True), is_entry)
            if pubsub is not None and not self.cursor.eof:
                yield from self._live(pubsub)
        finally:
            if pubsub is not None:
                pubsub.close()

    def _ride_out(self, read: Callable[[], T]) -> T:
        """``read()`` (reads only), Redis away ridden out as the module doc says."""
        if self._follow:
            return ride_out_outage(read, _follow_interrupted)
        return first_reads(read, self._retry_seconds, "log read")

    def _doer(self, pubsub: PubSub | None, *, ride: bool = False) -> Callable[[Request], object]:
        """What carries out the steps' requests (``producer.log_steps``) on redis-py; ``ride``:
        each Redis command rides an outage out (``_ride_out``; one read, so it may run again)."""

        def do(request: Request) -> object:
            if isinstance(request, Command):
                command = getattr(self._client, request.name)
                if ride:
                    return self._ride_out(lambda: command(*request.args, **request.kwargs))
                return command(*request.args, **request.kwargs)
            if isinstance(request, Pause):
                time.sleep(request.seconds)
                return None
            if request == NEXT_MESSAGE and pubsub is not None:
                return pubsub.get_message(timeout=self._slice)
            if request == IS_OVER:
                return self._is_over()
            raise ValueError(f"log reader: unknown request {request!r}")

        return do

    # -- live --------------------------------------------------------------

    def _subscribe(self) -> PubSub:
        """Subscribe and wait for Redis to confirm, so nothing published after the history read is lost."""
        pubsub = self._blocking.pubsub()
        try:
            pubsub.subscribe(self._channel)
            deadline = time.monotonic() + BLOCKING_SOCKET_TIMEOUT
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=self._slice)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except REDIS_DOWN:
            pubsub.close()
            raise
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
        """The entries of the next live message, and whether the execution ended without an eof
        batch (``log_steps.next_live``). All or nothing: a Redis error leaves the cursor as it was."""
        saved = replace(self.cursor)
        try:
            return collect(next_live(self._source, self.cursor), self._doer(pubsub), is_entry)
        except REDIS_DOWN:
            self.cursor = saved
            raise


def _follow_interrupted(exc: Exception, failures: int) -> None:
    if failures == 1:  # once per outage
        log.warning("log follow: Redis unreachable (%s); retrying until it is back", exc)
