"""The producer's writes of an input archive to Redis, checked so a Redis that lost them is noticed.

``write_input_archive`` (``Producer.submit(inputs=)``) and ``write_input_archive_async``
(``AsyncProducer``) drive one sans-I/O plan of commands (``_archive_writes``): the archive's
chunks with ``SETRANGE``, last chunk first, each with an ``INCRBY`` of the counter
``P:exec:ID:inputs:written``, every reply checked. A mismatch raises InputsLost and the
caller gives the submit up (nothing enqueued, both keys removed). Building the archive is
``producer/files.py``'s.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from schemas.wire import written_key

from .errors import ProducerError

if TYPE_CHECKING:
    from .files import InputArchive


class InputsLost(ProducerError):
    """Redis lost the input archive while the producer wrote it (restarted without persistence,
    or from an older copy, or the key was deleted): a write's reply, or the ``STRLEN`` after the
    last one, is not the archive's full length (``held`` bytes in ``key`` after ``written`` of
    ``size`` were written), or its counter ``KEY:written`` is not ``written`` (``counted``).
    The submit is given up: nothing is enqueued and both keys are removed."""

    def __init__(self, key: str, held: int, counted: int, written: int, size: int) -> None:
        self.key, self.held, self.counted, self.written, self.size = key, held, counted, written, size
        counts = "" if counted == written else f", {counted} counted in {written_key(key)}"
        super().__init__(
            f"inputs: Redis lost the input archive while it was written ({key} holds {held} bytes after "
            f"{written} of {size} were written{counts}; Redis restarted?): nothing enqueued"
        )


def write_input_archive(client: redis.Redis, key: str, archive: InputArchive, retention_seconds: int) -> None:
    """Copy the archive to ``key`` in chunks, expiring with the retention (:func:`_archive_writes`)."""
    writes = _archive_writes(key, archive, retention_seconds)
    replies: list[Any] | None = None
    while True:
        try:
            batch = writes.send(replies)
        except StopIteration:
            return
        if len(batch) == 1:
            replies = [client.execute_command(*batch[0])]
        else:
            with client.pipeline(transaction=False) as pipe:
                for command in batch:
                    pipe.execute_command(*command)
                replies = pipe.execute()


async def write_input_archive_async(
    client: aioredis.Redis, key: str, archive: InputArchive, retention_seconds: int
) -> None:
    """:func:`write_input_archive` on ``redis.asyncio`` (``AsyncProducer.submit(inputs=)``): the same writes."""
    writes = _archive_writes(key, archive, retention_seconds)
    replies: list[Any] | None = None
    while True:
        try:
            batch = writes.send(replies)
        except StopIteration:
            return
        if len(batch) == 1:
            replies = [await client.execute_command(*batch[0])]
        else:
            async with client.pipeline(transaction=False) as pipe:
                for command in batch:
                    pipe.execute_command(*command)
                replies = await pipe.execute()


def _archive_writes(
    key: str, archive: InputArchive, retention_seconds: int
) -> Generator[list[tuple[Any, ...]], list[Any] | None, None]:
    """The Redis commands that copy the archive to ``key``, batch by batch (no I/O of its own): a
    driver sends each batch (one round trip) and sends its replies back in.

    The chunks are written with ``SETRANGE`` *last first*: the first write makes the string its
    full length at once (Redis grows a string by ``APPEND`` a megabyte at a time, reallocating
    and copying as it goes: two to three times the Redis time at 16 MiB), and every later one
    lands below it. Each ``SETRANGE`` goes with an ``INCRBY`` of the bytes written to the
    counter ``KEY:written`` (same round trip). Redis replies to ``SETRANGE`` with the string's
    length, which must be the full length, and to ``INCRBY`` with the counter, which must be
    the bytes written so far: a Redis that lost the key (restarted without persistence: the
    next ``SETRANGE`` starts a new, shorter string, the counter starts again) or some of the
    writes (restarted from an older snapshot or AOF: the counter, written in the same order,
    is behind) raises InputsLost, so a corrupt archive is never enqueued. The last batch
    checks ``STRLEN`` once more and deletes the counter. It is written before the rq job
    exists, so nobody reads it half-filled.
    """
    size = archive.spec.archive_bytes
    counter = written_key(key)
    written = 0
    for offset, chunk in archive.chunks_last_first():
        batch: list[tuple[Any, ...]] = [("SETRANGE", key, offset, chunk), ("INCRBY", counter, len(chunk))]
        if written == 0:  # the last chunk: a fresh string at its full length, both keys expiring
            batch = [("DEL", key, counter), *batch, ("EXPIRE", key, retention_seconds),
                     ("EXPIRE", counter, retention_seconds)]
        replies = yield batch
        written += len(chunk)
        first = 1 if written == len(chunk) else 0
        held, counted = (int(replies[first]), int(replies[first + 1])) if replies else (-1, -1)
        if held != size or counted != written:
            raise InputsLost(key, held, counted, written, size)
    replies = yield [("STRLEN", key), ("DEL", counter)]
    held = int(replies[0]) if replies else -1
    if held != size or written != size:
        raise InputsLost(key, held, written, written, size)
