"""The last N lines of an execution's output, as ``docker logs --tail N`` counts them.

Log entries are chunks as the worker read them: one entry may hold many lines
(``seq 1 10`` usually arrives as one), and one line may be split over several
entries. ``docker logs`` stores one record per line of each stream and ``--tail``
counts those, so here lines are rebuilt per stream: a line ends at its ``\\n``,
and a stream's last, unfinished line counts as a line too. Lines are ordered by
the entry that ends them (when Docker would have logged them); the last ``n``
of the combined output are kept, every chunk of each kept line included, in the
original entry order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas import LogEntry


@dataclass(frozen=True)
class _LineEnd:
    stream: str
    entry: int  # index of the entry that ends the line
    offset: int  # where the next line of the stream starts inside that entry


def _line_ends(entries: Sequence[LogEntry]) -> list[_LineEnd]:
    """Every line end, oldest first; a stream's unfinished last line ends at its last character."""
    ends: list[_LineEnd] = []
    last_data: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.data:
            last_data[entry.stream] = index
        at = entry.data.find("\n")
        while at != -1:
            ends.append(_LineEnd(entry.stream, index, at + 1))
            at = entry.data.find("\n", at + 1)
    for stream, index in last_data.items():
        data = entries[index].data
        if not data.endswith("\n"):
            ends.append(_LineEnd(stream, index, len(data)))
    ends.sort(key=lambda e: (e.entry, e.offset))
    return ends


def tail_lines(entries: Sequence[LogEntry], n: int) -> tuple[list[LogEntry], bool]:
    """The entries holding the last ``n`` lines of ``entries`` (chunks cut where a kept
    line starts), and whether that is certain. False means ``entries`` may start too
    late: fewer than ``n`` lines were found, or a kept line may begin in an entry
    before them; a caller that read only the newest entries should then read further
    back (and need not when ``entries`` is the whole history).
    """
    if n <= 0:
        return [], True
    ends = _line_ends(entries)
    kept_ends = ends[-n:]
    # Per stream, the text kept starts just after the stream's last line end that is not kept.
    kept_per_stream: dict[str, int] = {}
    for end in kept_ends:
        kept_per_stream[end.stream] = kept_per_stream.get(end.stream, 0) + 1
    starts: dict[str, tuple[int, int]] = {}
    complete = len(ends) >= n
    for stream, count in kept_per_stream.items():
        stream_ends = [e for e in ends if e.stream == stream]
        if len(stream_ends) > count:
            boundary = stream_ends[-count - 1]
            starts[stream] = (boundary.entry, boundary.offset)
        else:
            starts[stream] = (0, 0)  # from the first entry we have
            complete = False
    out: list[LogEntry] = []
    for index, entry in enumerate(entries):
        start = starts.get(entry.stream)
        if start is None or index < start[0]:
            continue
        data = entry.data[start[1]:] if index == start[0] else entry.data
        if data:
            out.append(entry if data is entry.data else LogEntry(stream=entry.stream, ts=entry.ts, data=data))
    return out, complete
