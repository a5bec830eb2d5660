"""Ending a small log as one string instead of a stream (issue 14; ``schemas.compact_log``).

``ExecutionChannels`` hands every batch it shipped to a :class:`LogKeeper`.
While the log is small (``COMPACT_MAX_BYTES`` of entry data) and this worker
shipped all of it from ``seq`` 0, the keeper holds its batches; at the end the
channels write them and the eof batch as ``P:exec:ID:logz`` and delete the
stream instead of appending the eof batch to it. Otherwise (a large log, a log
resumed after adoption, a batch out of sequence) the stream stays and gets the
eof batch, as before.

Order, for readers that may be anywhere in between: SET the compact log, DEL
the stream, then PUBLISH eof, in one pipeline. A reader that finds no stream
finds the compact log; one that hears eof can read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas import LogBatch
from schemas.compact_log import COMPACT_MAX_BYTES, encode_compact_log

if TYPE_CHECKING:
    from redis.client import Pipeline


class LogKeeper:
    """The batches of one execution's log as shipped, while it can still end as one string."""

    def __init__(self, max_bytes: int = COMPACT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._batches: list[LogBatch] | None = []
        self._entries = 0
        self._size = 0

    @property
    def compactable(self) -> bool:
        return self._batches is not None

    def shipped(self, batch: LogBatch) -> None:
        """``batch`` reached Redis. A batch that does not follow the last one (a gap) ends keeping."""
        if self._batches is None:
            return
        self._size += sum(len(e.data) for e in batch.entries)
        if batch.seq != self._entries or self._size > self.max_bytes:
            self.give_up()
            return
        self._batches.append(batch)
        self._entries += len(batch.entries)

    def give_up(self) -> None:
        """This log ends in its stream (resumed from another worker, too large, or with a gap)."""
        self._batches = None

    def queue_end(self, pipe: Pipeline, eof: LogBatch, compact_key: str, stream_key: str, retention_seconds: int) -> bool:
        """Queue the compact log (the batches and ``eof``) and the stream's removal on ``pipe``;
        False (nothing queued) when the log keeps its stream."""
        if self._batches is None or eof.seq != self._entries:
            return False
        pipe.set(compact_key, encode_compact_log([*self._batches, eof]), ex=retention_seconds)
        pipe.delete(stream_key)
        return True
