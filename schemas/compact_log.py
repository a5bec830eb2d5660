"""An ended execution's whole log as one string: ``P:exec:ID:logz`` (issue 14).

A Redis stream costs about 4.7 KB even when it holds two small entries, more
than everything else an execution keeps. So once an execution has ended, the
worker that shipped its whole log replaces the ``P:exec:ID:log`` stream with
one string holding the same batches (eof included) and deletes the stream, in
one pipeline: SET the string, DEL the stream, PUBLISH the eof batch. Logs with
more entry data than ``COMPACT_MAX_BYTES``, and logs another worker started
(adoption), keep their stream.

The value is the JSON array of the stream's batches, in order, each as in the
stream's ``batch`` field: ``[{"seq": 0, "entries": [...]}, ..., {"seq": N, "eof": true}]``.
When that JSON is over ``COMPRESS_ABOVE_BYTES`` it is stored zlib-compressed
(RFC 1950) if that is smaller. A reader tells them apart by the first byte:
``[`` is JSON, anything else zlib. With redis-cli:

    redis-cli --raw GET dockrq:exec:ID:logz      # JSON (a compressed one starts with 'x')

Readers (``Producer.logs``, ``dockrq logs``, a worker resuming an adopted log)
read the stream and, when there is none, this string.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from .wire import LogBatch

#: Logs with more entry data than this (characters of ``data``) keep their stream.
COMPACT_MAX_BYTES = 64 * 1024
#: A compact log's JSON above this size is stored zlib-compressed when that is smaller.
COMPRESS_ABOVE_BYTES = 1024


def encode_compact_log(batches: Sequence[LogBatch]) -> bytes:
    """The stored form of a log's batches (the last one the eof): a JSON array, or zlib of it."""
    raw = ("[" + ",".join(b.to_json() for b in batches) + "]").encode()
    if len(raw) > COMPRESS_ABOVE_BYTES:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return packed
    return raw


def decode_compact_log(value: bytes | str) -> list[LogBatch]:
    """A ``P:exec:ID:logz`` value back into its batches. Raises ValueError if it is neither form."""
    if isinstance(value, str):
        value = value.encode()
    if value[:1] != b"[":
        try:
            value = zlib.decompress(value)
        except zlib.error as exc:
            raise ValueError(f"compact log: neither JSON nor zlib ({exc})") from None
    items = json.loads(value)
    if not isinstance(items, list):
        raise ValueError("compact log: not a JSON array of log batches")
    return [LogBatch.model_validate(item) for item in items]


def read_compact_log(client: Any, key: str) -> list[LogBatch] | None:
    """The batches of the compact log at ``key`` (one ``GET``), or None when there is none (or it is unreadable)."""
    return compact_log_or_none(client.get(key))


def compact_log_or_none(value: bytes | str | None) -> list[LogBatch] | None:
    """``decode_compact_log``, with None for a missing or unreadable value (a reader then has no log)."""
    if value is None:
        return None
    try:
        return decode_compact_log(value)
    except ValueError:
        return None


def log_batches(client: Any, stream_key: str, compact_key: str) -> list[LogBatch]:
    """Every batch of one execution's log as stored: the stream's (``XRANGE``), or, when there is
    no stream, the compact log's. For tools and tests; followers use ``producer.logs.LogReader``."""
    from .wire import LOG_STREAM_FIELD

    field = LOG_STREAM_FIELD.encode()
    stream = [LogBatch.model_validate_json(fields[field]) for _, fields in client.xrange(stream_key)]
    return stream or read_compact_log(client, compact_key) or []
