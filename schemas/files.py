"""Files in and out of an execution: the request and result fields, and the archive format.

Both directions move one uncompressed POSIX tar archive (ustar, with pax headers
for long names) per execution through Redis:

* inputs: ``P:exec:ID:inputs``, written by the producer before the rq job is
  enqueued; the request's ``inputs`` field announces it (its container paths,
  entry count, file bytes and archive size) and the worker checks the archive
  against that before anything reaches Docker;
* outputs: ``P:exec:ID:outputs``, written by the worker once the container has
  ended; the result lists what it holds (``output_files``) and its size.

Entry names are container paths without the leading ``/`` (``data/in/a.csv``).
Sizes that limits count are file *contents* (the sum of regular files' sizes);
the archive adds a 512-byte header per entry and pads each file to 512 bytes.

Nothing here does I/O: ``ChunkReader`` turns any iterator of byte chunks (a
Redis ``GETRANGE`` loop, a Docker response) into the file object ``tarfile``
reads in stream mode.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from .defaults import DEFAULT_MAX_INPUT_BYTES
from .text import escaped_name, utf8_problem

MiB = 1024 * 1024
DEFAULT_OUTPUT_FILES_LIMIT = 16 * MiB  # request default of output_files_limit_bytes
MAX_OUTPUT_FILES_LIMIT = 1024 * MiB
MAX_INPUT_ENTRIES = 10_000  # entries of one input archive
MAX_OUTPUT_ENTRIES = 10_000  # entries collected (and listed in the result) per execution
MAX_FILE_PATHS = 64  # container paths per request, inputs and outputs each
MAX_PATH_BYTES = 1024  # a container path of a request, an input entry name or symlink target
# An output entry's container path (with its leading '/'), as long as Linux lets a path be
# (PATH_MAX, 4096 bytes with its NUL): deeper entries are left out and flagged "unsupported".
MAX_OUTPUT_PATH_BYTES = 4096
# Entries left out for what they are (OutputSkipped), listed per execution; more are only counted
# in ``outputs_truncated_by``.
MAX_OUTPUTS_SKIPPED_LISTED = 100
# Why output entries were left out (ExecutionResult.outputs_truncated_by), each once, in order:
TRUNCATION_REASONS = {
    "entries": "MAX_OUTPUT_ENTRIES (10 000) entries were kept",
    "bytes": "a file did not fit in the output files limit (output_files_limit_bytes)",
    "read_limit": "256 MiB of files over the limit were read past: the rest of that path was left unread",
    "unsupported": "an entry dockrq cannot store (a path over 4096 bytes, a name that is not a plain path)",
    "special": "a device, fifo or socket (never collected)",
    "error": "collecting failed: nothing kept",
}
# Per entry, an archive may add this much to its file contents (header, padding, a pax
# header for a long name), plus the end-of-archive blocks and tarfile's record padding.
ENTRY_FRAMING_BYTES = 3 * 1024
ARCHIVE_END_BYTES = 10 * 1024
# Redis reads and writes of an archive move this much per command: memory stays flat.
ARCHIVE_CHUNK_BYTES = 1024 * 1024

FileType = Literal["file", "dir", "symlink", "hardlink"]


class ArchiveGone(Exception):
    """An archive string in Redis ended before the length it had when its reading began: it
    vanished while it was read (deleted, expired, or lost when Redis restarted without
    persistence). A store failure, never a fault of the archive's format: not an EOFError,
    which ``tarfile`` readers count among an archive's own errors (``key``, ``offset`` where
    it ended, ``size`` it had)."""

    def __init__(self, key: str, offset: int, size: int) -> None:
        self.key, self.offset, self.size = key, offset, size
        super().__init__(
            f"the archive at {key} vanished from Redis while it was read (it ends at byte {offset} of {size}: "
            f"deleted, expired, or lost in a Redis restart)"
        )


def archive_chunks(client: Any, key: str, size: int, chunk: int = ARCHIVE_CHUNK_BYTES) -> Iterator[bytes]:
    """The first ``size`` bytes of the archive string at ``key``, one ``GETRANGE`` per ``chunk``
    (producer and worker read archives this way: never a whole archive in memory).

    The caller has checked the string is ``size`` bytes long (``STRLEN``); raises ArchiveGone
    if it ends before ``size`` while it is read."""
    offset = 0
    while offset < size:
        data = client.getrange(key, offset, min(offset + chunk, size) - 1)
        if not data:
            raise ArchiveGone(key, offset, size)
        offset += len(data)
        yield data


NAME_MAX = 255  # bytes in one name (path component) on Linux filesystems


def check_container_path(value: str, max_bytes: int = MAX_PATH_BYTES, *, colon_ok: bool = False) -> str:
    """An absolute, normalised container path other than ``/``: ``/data/in``, not
    ``data``, ``/data/``, ``/a/../b``, ``/a//b`` or ``/``, of at most ``max_bytes`` bytes
    (a request's paths: MAX_PATH_BYTES; a collected output's: MAX_OUTPUT_PATH_BYTES). A request's
    paths never hold ``:`` (Docker's ``-v SRC:DST`` syntax); ``colon_ok``: a name found inside a
    collected directory, which may (``dockrq cp ID:/out/a:b``, as ``docker cp``). Raises ValueError."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be an absolute container path")
    if "\x00" in value or (":" in value and not colon_ok):
        raise ValueError("must not contain NUL or ':'")
    if len(value.encode("utf-8", "surrogateescape")) > max_bytes:
        raise ValueError(f"must be at most {max_bytes} bytes")
    if value == "/":
        raise ValueError("must name a path below '/', not the whole filesystem")
    if posixpath.normpath(value) != value or value.startswith("//") or any(p in (".", "..") for p in value.split("/")):
        raise ValueError(f"must be normalised (no '.', '..', '//' or trailing '/'): {value!r}")
    long_name = next((p for p in value.split("/") if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)
    if long_name is not None:  # the daemon's untar would fail with "file name too long"
        raise ValueError(f"has a name of more than {NAME_MAX} bytes (Linux's NAME_MAX): {long_name[:40]!r}...")
    return value


ContainerPath = Annotated[str, AfterValidator(check_container_path)]


def overlapping(paths: Iterable[str]) -> tuple[str, str] | None:
    """Two of ``paths`` where one is the other or lies inside it, or None."""
    ordered = sorted(paths)
    for a, b in zip(ordered, ordered[1:]):
        if b == a or b.startswith(a + "/"):
            return a, b
    return None


def entry_name(container_path: str) -> str:
    """The archive entry name of a container path: ``/data/in`` -> ``data/in``."""
    return container_path.lstrip("/")


def archive_bound(file_bytes: int, entries: int) -> int:
    """The largest archive holding ``entries`` entries with ``file_bytes`` of contents."""
    return file_bytes + entries * ENTRY_FRAMING_BYTES + ARCHIVE_END_BYTES


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class InputsSpec(_Model):
    """The request's announcement of its input archive (``P:exec:ID:inputs``).

    ``paths``: the container paths the archive fills (each entry is one of them or
    below one); ``entries``: how many entries it has; ``bytes``: the sum of its
    regular files' sizes; ``archive_bytes``: its exact length in Redis.
    """

    paths: list[ContainerPath] = Field(min_length=1, max_length=MAX_FILE_PATHS)
    entries: StrictInt = Field(ge=1, le=MAX_INPUT_ENTRIES)
    bytes: StrictInt = Field(ge=0)
    archive_bytes: StrictInt = Field(ge=1024)

    @model_validator(mode="after")
    def _consistent(self) -> InputsSpec:
        clash = overlapping(self.paths)
        if clash is not None:
            raise ValueError(f"paths: {clash[1]!r} is {clash[0]!r} or inside it")
        if self.archive_bytes > archive_bound(self.bytes, self.entries):
            raise ValueError(
                f"archive_bytes: {self.archive_bytes} is more than {self.entries} entries with "
                f"{self.bytes} bytes of files can take ({archive_bound(self.bytes, self.entries)})"
            )
        return self


class OutputFile(BaseModel):
    """One entry of the output archive: its container path, size in bytes (files only)
    and type; ``link`` is a symlink's target or a hard link's container path.

    ``escaped``: the container chose these names, and a ``path`` or ``link`` that is not
    UTF-8 cannot be stored as it is; then both are listed escaped (``schemas.text.escaped_name``:
    ``\\xNN`` a byte that is not UTF-8, ``\\\\`` a backslash) and ``escaped`` is true, so
    ``/o/a\\xff`` with ``escaped`` is the byte 0xFF and without it four characters. The
    archive keeps the raw bytes."""

    model_config = ConfigDict(defer_build=True, extra="ignore", frozen=True)

    path: str
    size: int = 0
    type: FileType
    link: str | None = None
    escaped: bool = False

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("escaped"):
            names = [data.get("path"), data.get("link")]
            if any(isinstance(n, str) and utf8_problem(n) for n in names):
                escape = {k: escaped_name(data[k]) for k in ("path", "link") if isinstance(data.get(k), str)}
                data = {**data, **escape, "escaped": True}
        return data


class OutputSkipped(BaseModel):
    """An existing output entry that was not collected for what it is (not for a limit): its
    container path, its ``type`` as the archive said (``"device"``, ``"fifo"``, ``"socket"``,
    ``"file"``, ``"dir"``, ``"symlink"``, ``"hardlink"``) and ``reason``, one of
    ``outputs_truncated_by``'s: ``"special"`` (devices, fifos, sockets are never collected) or
    ``"unsupported"`` (a path over MAX_OUTPUT_PATH_BYTES, or not a plain path). ``path`` is
    escaped as OutputFile's is (``escaped``)."""

    model_config = ConfigDict(defer_build=True, extra="ignore", frozen=True)

    path: str
    type: str
    reason: str
    escaped: bool = False

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("escaped") and isinstance(data.get("path"), str):
            if utf8_problem(data["path"]):
                data = {**data, "path": escaped_name(data["path"]), "escaped": True}
        return data


# The request fields of this module with their defaults. A request that leaves them
# at their defaults is sent without them, so workers from before files still take it.
FILE_REQUEST_DEFAULTS: dict[str, Any] = {
    "inputs": None,
    "outputs": [],
    "output_files_limit_bytes": DEFAULT_OUTPUT_FILES_LIMIT,
}


def drop_default_file_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (a request as JSON) without the file fields that hold their defaults."""
    for name, default in FILE_REQUEST_DEFAULTS.items():
        if name in payload and payload[name] == default:
            del payload[name]
    return payload


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (for ``tarfile`` stream mode).

    ``consumed`` counts the bytes handed out. No seeking; memory is one chunk.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = memoryview(b"")
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.consumed += n
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()
