"""One execution's output: captured within a byte budget, readable while it grows.

The reader thread appends raw frames as they arrive; any number of log streams
(tail, follow, the worker's Redis shipper) read the same entries by position, so
no reader can slow the container down and nothing is copied per reader. Each
stream keeps at most ``limit`` bytes; beyond that the rest is drained and
dropped and the stream is flagged truncated, which keeps memory flat however
much a container writes.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from schemas import LogEntry

STREAMS = ("stdout", "stderr")


@dataclass
class _StreamState:
    decoder: codecs.IncrementalDecoder
    captured: int = 0
    truncated: bool = False


def _new_stream() -> _StreamState:
    # "replace" keeps invalid UTF-8 visible as U+FFFD instead of ending the output;
    # the incremental decoder keeps a character split across two frames whole.
    return _StreamState(codecs.getincrementaldecoder("utf-8")(errors="replace"))


class OutputLog:
    """Append-only, capped, thread-safe list of log entries with a closed flag."""

    def __init__(self, limit_per_stream: int) -> None:
        self.limit = limit_per_stream
        self._entries: list[tuple[str, float, str]] = []
        self._streams = {name: _new_stream() for name in STREAMS}
        self._closed = False
        self._cond = threading.Condition()

    # -- writer side (the attach reader thread) -----------------------------
    def append(self, stream: str, data: bytes) -> None:
        state = self._streams[stream]
        room = self.limit - state.captured
        if room <= 0:
            if data:
                state.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            state.truncated = True
        state.captured += len(data)
        text = state.decoder.decode(data, final=state.captured >= self.limit)
        if text:
            self._publish(stream, text)

    def close(self) -> None:
        """End of output: flush half-decoded bytes and wake every reader."""
        for name, state in self._streams.items():
            rest = state.decoder.decode(b"", final=True)
            if rest:
                self._publish(name, rest)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _publish(self, stream: str, text: str) -> None:
        # Whole lines go out as one entry; an unfinished last line goes out at
        # once as its own entry, so a progress bar without newlines is seen live.
        ts = time.time()
        cut = text.rfind("\n") + 1
        pieces = [text] if cut in (0, len(text)) else [text[:cut], text[cut:]]
        with self._cond:
            self._entries.extend((stream, ts, piece) for piece in pieces)
            self._cond.notify_all()

    # -- reader side --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._entries)

    def truncated(self, stream: str) -> bool:
        return self._streams[stream].truncated

    def text(self, stream: str) -> str:
        with self._cond:
            return "".join(data for s, _, data in self._entries if s == stream)

    def read(self, pos: int, max_entries: int, timeout: float | None) -> list[tuple[str, float, str]] | None:
        """Entries from ``pos`` on; ``[]`` if none came within ``timeout``; ``None`` once closed and read."""
        with self._cond:
            if pos >= len(self._entries) and not self._closed:
                self._cond.wait_for(lambda: pos < len(self._entries) or self._closed, timeout)
            if pos < len(self._entries):
                return self._entries[pos : pos + max_entries]
            return None if self._closed else []


class LogStream:
    """What ``get_log_stream`` returns: an iterator of LogEntry, plus batch reads
    for shippers that want to send many entries per round trip."""

    def __init__(self, log: OutputLog, tail: bool, follow: bool) -> None:
        self._log = log
        self._pos = 0 if tail else len(log)
        # Without follow the stream ends at what exists now.
        self._end: int | None = None if follow else len(log)

    def read_batch(self, max_entries: int = 512, timeout: float | None = None) -> list[LogEntry] | None:
        limit = max_entries
        if self._end is not None:
            limit = min(limit, self._end - self._pos)
            if limit <= 0:
                return None
        raw = self._log.read(self._pos, limit, timeout)
        if raw is None:
            return None
        self._pos += len(raw)
        return [LogEntry(stream=s, ts=ts, data=d) for s, ts, d in raw]  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[LogEntry]:
        while (batch := self.read_batch(timeout=None)) is not None:
            yield from batch
