"""Following one execution's log from asyncio: ``producer.logs``' algorithm on ``redis.asyncio``.

Subscribe first (and wait for the confirmation), read the history from the
stream, then live batches. The steps are ``producer.log_steps``' (without I/O,
shared with the sync ``LogReader``: ``LogCursor`` turns the overlap into exact
deduplication by ``seq`` and tells when a batch starts past what was seen,
which is then read back from the stream); this reader carries their requests
out on ``redis.asyncio``. Redis away is ridden out from the first read on, as ``LogReader`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from schemas import LogEntry
from schemas.connections import BLOCK_SLICE_SECONDS, REDIS_DOWN, ride_out_outage_async

from .log_steps import (
    IS_OVER,
    NEXT_MESSAGE,
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
from .reaching import DEFAULT_REDIS_RETRY_SECONDS, first_reads_async
from .steps import acollect

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
    ) -> None:
        self._client = client
        self._source = LogSource(stream_key, compact_key)
        self._channel = channel
        self._tail = entries_wanted(tail)
        self._follow = follow
        self._is_over = is_over
        self._retry_seconds = retry_seconds
        self.cursor = LogCursor()

    async def __aiter__(self) -> AsyncIterator[LogEntry]:
        pubsub = await self._ride_out(self._subscribe) if self._follow else None
        try:
            entries, _ = await acollect(history(self._source, self.cursor, self._tail), self._doer(None, ride=True), is_entry)
            for entry in entries:
                yield entry
            if pubsub is not None and not self.cursor.eof:
                async for entry in self._live(pubsub):
                    yield entry
        finally:
            if pubsub is not None:
                await pubsub.aclose()

    async def _ride_out(self, read: Callable[[], Awaitable[T]]) -> T:
        """As ``LogReader._ride_out``: until Redis is back when following, else ``retry_seconds``."""
        if self._follow:
            return await ride_out_outage_async(read, _follow_interrupted)
        return await first_reads_async(read, self._retry_seconds, "log read")

    def _doer(self, pubsub: aioredis.client.PubSub | None, *, ride: bool = False) -> Callable[[Request], Awaitable[Any]]:
        """What carries out the steps' requests (``producer.log_steps``) on redis.asyncio; ``ride``
        as ``LogReader._doer``'s."""

        async def do(request: Request) -> Any:
            if isinstance(request, Command):
                command = getattr(self._client, request.name)
                if ride:
                    return await self._ride_out(lambda: command(*request.args, **request.kwargs))
                return await command(*request.args, **request.kwargs)
            if isinstance(request, Pause):
                await asyncio.sleep(request.seconds)
                return None
            if request == NEXT_MESSAGE and pubsub is not None:
                return await pubsub.get_message(timeout=BLOCK_SLICE_SECONDS)
            if request == IS_OVER:
                return await self._is_over()
            raise ValueError(f"log reader: unknown request {request!r}")

        return do

    async def _subscribe(self) -> aioredis.client.PubSub:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            for _ in range(30):
                message = await pubsub.get_message(timeout=BLOCK_SLICE_SECONDS)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except REDIS_DOWN:
            await pubsub.aclose()
            raise
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
        """As ``LogReader._next_live`` (``log_steps.next_live``). All or nothing: a Redis error
        leaves the cursor as it was."""
        saved = replace(self.cursor)
        try:
            return await acollect(next_live(self._source, self.cursor), self._doer(pubsub), is_entry)
        except REDIS_DOWN:
            self.cursor = saved
            raise


async def _follow_interrupted(exc: Exception, failures: int) -> None:
    if failures == 1:  # once per outage
        log.warning("log follow: Redis unreachable (%s); retrying until it is back", exc)
