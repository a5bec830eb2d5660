"""Following one execution's log from asyncio: ``producer.logs``' algorithm on ``redis.asyncio``.

Subscribe first (and wait for the confirmation), read the history from the
stream, then live batches; ``LogCursor`` (shared with the sync reader) turns the
overlap into exact deduplication by ``seq`` and tells when a batch starts past
what was seen, which is then read back from the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import redis
import redis.asyncio as aioredis

from schemas import LogBatch, LogEntry
from schemas.compact_log import compact_log_or_none
from schemas.connections import BLOCK_SLICE_SECONDS, REDIS_DOWN, ride_out_outage_async

from .logs import _PAGE, GAP_RECHECK_SECONDS, LogCursor, _entries_of, _entries_wanted
from .tail import tail_lines

log = logging.getLogger(__name__)


class AsyncLogReader:
    """Async iterator of one execution's entries; ``tail``/``follow``/``is_over`` as ``LogReader``."""

    def __init__(
        self,
        client: aioredis.Redis,
        stream_key: str,
        channel: str,
        *,
        tail: bool | int = True,
        follow: bool = True,
        is_over: Callable[[], Awaitable[bool]],
        compact_key: str | None = None,
    ) -> None:
        self._client = client
        self._stream = stream_key
        self._channel = channel
        self._tail = _entries_wanted(tail)
        self._follow = follow
        self._is_over = is_over
        self._compact_key = compact_key
        self.cursor = LogCursor()

    async def __aiter__(self) -> AsyncIterator[LogEntry]:
        pubsub = await self._subscribe() if self._follow else None
        try:
            for entry in await self._history():
                yield entry
            if pubsub is not None and not self.cursor.eof:
                async for entry in self._live(pubsub):
                    yield entry
        finally:
            if pubsub is not None:
                await pubsub.aclose()

    async def _history(self) -> list[LogEntry]:
        """``LogReader._history`` on asyncio: the last ``tail`` lines (not entries, as
        ``docker logs --tail``), or everything; the compact log once the stream was replaced."""
        wanted = self._tail
        if wanted is None:
            return await self._catch_up()
        newest_first: list[tuple[bytes, LogBatch]] = []
        upper = "+"
        while True:
            page = await self._client.xrevrange(self._stream, upper, "-", count=_PAGE if wanted else 1)
            newest_first.extend((entry_id, LogBatch.from_stream_entry(fields)) for entry_id, fields in page)
            exhausted = len(page) < (_PAGE if wanted else 1)
            if not newest_first:
                return await self._compact_tail(wanted)
            kept, sure = tail_lines(_entries_of(reversed(newest_first)), wanted)
            if not page or sure or exhausted or not wanted:
                break
            upper = "(" + page[-1][0].decode()
        newest_id, newest = newest_first[0]
        self.cursor.next_seq = newest.seq + len(newest.entries)
        self.cursor.eof = any(batch.eof for _, batch in newest_first)
        self.cursor.last_id = newest_id
        return kept

    async def _compact_tail(self, wanted: int) -> list[LogEntry]:
        compact = await self._compact()
        if not compact:
            return []
        kept, _ = tail_lines(_entries_of((b"", batch) for batch in compact), wanted)
        self.cursor.next_seq = compact[-1].seq + len(compact[-1].entries)
        self.cursor.eof = any(batch.eof for batch in compact)
        return kept

    async def _catch_up(self) -> list[LogEntry]:
        out: list[LogEntry] = []
        first = True
        while not self.cursor.eof:
            page = await self._client.xrange(self._stream, "(" + self.cursor.last_id.decode(), "+", count=_PAGE)
            if first and not page:
                compact = await self._compact()
                if compact is not None:
                    for batch in compact:
                        out.extend(self.cursor.take(batch, skip_gap=True) or ())
                    return out
            first = False
            for entry_id, fields in page:
                self.cursor.last_id = entry_id
                out.extend(self.cursor.take(LogBatch.from_stream_entry(fields), skip_gap=True) or ())
                if self.cursor.eof:
                    return out
            if len(page) < _PAGE:
                break
        return out

    async def _compact(self) -> list[LogBatch] | None:
        """The ended log's batches when the stream was replaced by the compact key (issue 14)."""
        if self._compact_key is None or await self._client.exists(self._stream):
            return None
        return compact_log_or_none(await self._client.get(self._compact_key))

    async def _subscribe(self) -> aioredis.client.PubSub:
        pubsub = self._client.pubsub()
        await pubsub.subscribe(self._channel)
        for _ in range(30):
            message = await pubsub.get_message(timeout=BLOCK_SLICE_SECONDS)
            if message is not None and message["type"] == "subscribe":
                return pubsub
        await pubsub.aclose()
        raise redis.TimeoutError(f"no subscribe confirmation for {self._channel}")

    async def _live(self, pubsub: aioredis.client.PubSub) -> AsyncIterator[LogEntry]:
        while not self.cursor.eof:
            # PubSub reconnects and resubscribes on its next read; what was published
            # while Redis was away is recovered from the stream by the gap check.
            entries, ended = await ride_out_outage_async(lambda: self._next_live(pubsub), _follow_interrupted)
            for entry in entries:
                yield entry
            if ended:
                return

    async def _next_live(self, pubsub: aioredis.client.PubSub) -> tuple[list[LogEntry], bool]:
        """As ``LogReader._next_live``: the entries of the next live message, and whether the
        execution ended without an eof batch. All or nothing: a Redis error leaves the cursor as it was."""
        saved = replace(self.cursor)
        try:
            message = await pubsub.get_message(timeout=BLOCK_SLICE_SECONDS)
            if message is None:
                ended = await self._is_over()
                return (await self._catch_up() if ended else []), ended
            if message["type"] != "message":
                return [], False
            batch = LogBatch.model_validate_json(message["data"])
            fresh = self.cursor.take(batch, skip_gap=False)
            caught_up: list[LogEntry] = []
            for pause in (0.0, GAP_RECHECK_SECONDS):
                if fresh is not None:
                    break
                await asyncio.sleep(pause)
                caught_up += await self._catch_up()
                fresh = self.cursor.take(batch, skip_gap=False)
            return caught_up + (fresh if fresh is not None else self.cursor.take(batch, skip_gap=True) or []), False
        except REDIS_DOWN:
            self.cursor = saved
            raise


async def _follow_interrupted(exc: Exception, failures: int) -> None:
    log.warning("log follow: Redis error (%s); retrying", exc)
