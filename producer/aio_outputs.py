"""``AsyncProducer.outputs``, ``outputs_archive``, ``copy_out``, ``copy_out_archive``: ``Producer``'s, for asyncio.

The sync methods (``producer/outputs.py``: ``extract.safe_extract``, ``copy_dest``'s
``docker cp`` destination rules, ``cp_tar``) run unchanged in a worker thread
(``asyncio.to_thread``), so their local-disk work never blocks the event loop. Each
Redis command they send (``LINDEX``, ``EXISTS``, ``STRLEN``, then ``GETRANGE`` of one
1 MiB chunk at a time) goes through ``_LoopBridge``: the thread hands it to the event
loop (``asyncio.run_coroutine_threadsafe``), where the AsyncProducer's
``redis.asyncio`` client sends it, and waits for its reply. So the archive is streamed
from Redis to the disk with one chunk in memory, the checks run in the sync order, and
the errors are the sync ones; nothing is spooled. A caller's ``on_skip`` is called on
the event loop too, in order, before the coroutine returns.

A cancelled coroutine (``asyncio.wait_for``, ``task.cancel()``) raises CancelledError at
once; its thread stops at its next Redis command or skip line (what it was writing is
removed, as on any failure of ``safe_extract``; files already written stay).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from .client import Producer
from .extract import ExtractReport
from .outputs import OutputsMixin

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from schemas import Keys

T = TypeVar("T")

_POLL_SECONDS = 0.5  # how often a waiting thread looks whether its caller is gone


class _Abandoned(Exception):
    """Ends the thread of a cancelled coroutine (nobody awaits its result)."""


class _LoopBridge:
    """The redis-py calls ``OutputsMixin`` makes, as a sync client for its thread: each is
    sent by the ``redis.asyncio`` ``client`` on ``loop`` and its reply (or error) returned."""

    def __init__(self, client: aioredis.Redis, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.abandoned = False

    def on_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` (a coroutine is awaited) run on the loop; raises what it raises."""

        async def call() -> Any:
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        if self.abandoned:
            raise _Abandoned("the awaiting coroutine was cancelled")
        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        while not future.done():
            concurrent.futures.wait([future], timeout=_POLL_SECONDS)
            if not future.done() and not self._loop.is_running():
                future.cancel()
                raise _Abandoned("the event loop stopped")
            if self.abandoned:  # nobody awaits the rest
                future.cancel()
                raise _Abandoned("the awaiting coroutine was cancelled")
        return future.result()

    def lindex(self, key: str, index: int) -> Any:
        return self.on_loop(self._client.lindex, key, index)

    def exists(self, *keys: str) -> int:
        return int(self.on_loop(self._client.exists, *keys))

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.on_loop(self._client.hgetall, key))

    def strlen(self, key: str) -> int:
        return int(self.on_loop(self._client.strlen, key))

    def getrange(self, key: str, start: int, end: int) -> bytes:
        return bytes(self.on_loop(self._client.getrange, key, start, end))


class _ThreadOutputs(OutputsMixin):
    """``Producer``'s output methods (and the reads they need, ``Producer``'s own) on a bridge."""

    _check_id = staticmethod(Producer._check_id)
    _outcome = Producer._outcome
    _require_known = Producer._require_known

    def __init__(self, bridge: _LoopBridge, keys: Keys) -> None:
        self._client = bridge  # type: ignore[assignment]
        self.keys = keys


class AsyncOutputsMixin:
    """Getting an ended execution's output files from asyncio code (needs ``_client``, the
    ``redis.asyncio`` client, and ``keys`` from ``AsyncProducer``)."""

    _client: aioredis.Redis
    keys: Keys

    async def _in_thread(self, name: str, *args: Any, on_skip: Callable[[str], None] | None = None) -> Any:
        bridge = _LoopBridge(self._client, asyncio.get_running_loop())
        method = getattr(_ThreadOutputs(bridge, self.keys), name)
        kwargs = {} if on_skip is None else {"on_skip": lambda line: bridge.on_loop(on_skip, line)}
        try:
            return await asyncio.to_thread(method, *args, **kwargs)
        finally:
            bridge.abandoned = True  # after a cancel: the thread stops at its next Redis call

    async def outputs(
        self, execution_id: str, dest_dir: str | Path, *, on_skip: Callable[[str], None] | None = None
    ) -> ExtractReport:
        """As ``Producer.outputs``: extract an ended execution's output files into ``dest_dir``
        (``/out/r.json`` -> ``dest_dir/out/r.json``), skipping hostile entries; returns the
        ``ExtractReport``. Raises CopyRefused, OutputsUnavailable (not ended, none collected,
        expired, not the size announced), ArchiveRefused or ExecutionNotFound, as there."""
        return await self._in_thread("outputs", execution_id, dest_dir, on_skip=on_skip)

    async def copy_out(
        self, execution_id: str, container_path: str, dest: str | Path, *, on_skip: Callable[[str], None] | None = None
    ) -> ExtractReport:
        """As ``Producer.copy_out`` (``dockrq cp ID:CONTAINER_PATH DEST``): one collected path,
        placed by ``docker cp``'s destination rules; same report and errors."""
        return await self._in_thread("copy_out", execution_id, container_path, dest, on_skip=on_skip)

    async def copy_out_archive(self, execution_id: str, container_path: str, out: BinaryIO) -> int:
        """As ``Producer.copy_out_archive`` (``dockrq cp ID:CONTAINER_PATH -``): a tar of one collected
        path written to the binary file object ``out`` (from a worker thread), streamed; returns
        the number of entries written."""
        return int(await self._in_thread("copy_out_archive", execution_id, container_path, out))

    async def outputs_archive(self, execution_id: str, out: Any = None) -> bytes | int:
        """As ``Producer.outputs_archive``: the output archive as stored, its bytes; with a binary
        file object ``out``, written there in chunks (from a worker thread; memory stays flat)
        and its length returned."""
        return await self._in_thread("outputs_archive", execution_id, out)
