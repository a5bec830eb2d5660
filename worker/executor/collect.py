"""Collecting output files: ``GET /containers/ID/archive`` streams re-written into one archive.

Each output path is one ``GET /containers/ID/archive?path=`` (docker-py's ``get_archive``,
what ``docker cp`` does), read with ``tarfile`` in stream mode; whole entries that fit are
written to the sink (``files.OutputSink``), the rest is left out and flagged, never silently:

* over ``MAX_OUTPUT_ENTRIES`` entries: ``"entries"``; a file over the room left in the
  output files limit: ``"bytes"``;
* a device, fifo or socket, or a path under ``/dev``, ``/proc``, ``/sys`` not there after
  the end (the runtime's, mounted only while it runs): ``"special"``; a name dockrq cannot
  store (a container path over ``MAX_OUTPUT_PATH_BYTES``, Linux's PATH_MAX, or not a plain
  path): ``"unsupported"``; both are listed in ``outputs_skipped`` (the first
  ``MAX_OUTPUTS_SKIPPED_LISTED``);
* a file too large for the limit is read past (the daemon streams it, and has no way to skip
  or list a directory's entries: the archive API's only listing is the archive itself). Once
  reading past one would take the bytes read past over ``MAX_SKIPPED_BYTES``, that path's
  stream is closed there, unread, and the rest of *that path* is left out: ``"read_limit"``.
  The next output paths are still collected (closing a stream costs nothing).
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Protocol

import requests
from docker.errors import NotFound

from schemas import MAX_OUTPUT_ENTRIES, ChunkReader, OutputFile, OutputSkipped, entry_name
from schemas.files import MAX_OUTPUT_PATH_BYTES, MAX_OUTPUTS_SKIPPED_LISTED
from schemas.text import quoted_name

from .archive import END_OF_ARCHIVE, STREAM_BUFFER, Coalesce, header, member_data, new_info, padding, plain_name
from .client import DockerClient

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024

# Members too large for the room left are read past and dropped; reading past more than this
# many such bytes in all is not done: the stream of that path is closed there (a container
# cannot keep a worker streaming a 20 GB sparse file it will not keep).
MAX_SKIPPED_BYTES = 256 * 1024 * 1024
# What the runtime mounts while the container runs (devices, procfs, sysfs): gone once it has
# ended, when outputs are collected, so a path there that is not found is not "missing" but
# left out as "special" (type "runtime"): ``--output /dev/null`` is never collectable.
RUNTIME_DIRS = ("/dev", "/proc", "/sys")


class OutputSink(Protocol):
    """Where the output archive goes: bytes appended in order, then committed whole or aborted."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def archive_stream(client: DockerClient, container_id: str, path: str) -> requests.Response | None:
    """``GET /containers/ID/archive?path=`` as an open streaming response; None if the path does not exist."""
    url = client.api._url("/containers/{0}/archive", container_id)
    response = client.api._get(url, params={"path": path}, stream=True, headers={"Accept-Encoding": "identity"})
    if response.status_code == 404:
        response.close()
        return None
    try:
        client.api._raise_for_status(response)
    except NotFound:
        response.close()
        return None
    return response


def _special_type(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "socket" if member.type == b"s" else "special"


@dataclass
class Collector:
    """Builds the output archive: whole entries only, file contents within ``limit`` bytes.

    ``collect(path)`` for each output path, then ``finish()`` (the archive's length; the sink
    committed). Daemon and sink errors propagate (the caller aborts the sink)."""

    client: DockerClient
    container_id: str
    limit: int
    sink: OutputSink
    files: list[OutputFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    skipped_entries: list[OutputSkipped] = field(default_factory=list)
    truncated: bool = False
    truncated_by: list[str] = field(default_factory=list)  # schemas.files.TRUNCATION_REASONS, each once
    used: int = 0
    skipped: int = 0
    written: int = 0
    _out: Coalesce = field(default_factory=Coalesce)

    def _left_out(self, reason: str) -> None:
        self.truncated = True
        if reason not in self.truncated_by:
            self.truncated_by.append(reason)

    def _unsupported(self, path: str, kind: str, reason: str) -> None:
        """An entry left out for what it is: flagged, listed (the first ones) and logged."""
        self._left_out(reason)
        if len(self.skipped_entries) < MAX_OUTPUTS_SKIPPED_LISTED:
            self.skipped_entries.append(OutputSkipped(path=path, type=kind, reason=reason))
        log.info("output entry %s left out: %s (%s)", quoted_name(path[:200]), reason, kind)

    def collect(self, path: str) -> None:
        """One output path (a container path): what fits goes to the sink; a path that does
        not exist goes on ``missing``."""
        if len(self.files) >= MAX_OUTPUT_ENTRIES:
            self._left_out("entries")
            return
        response = archive_stream(self.client, self.container_id, path)
        if response is None:
            if any(path == top or path.startswith(top + "/") for top in RUNTIME_DIRS):
                self._unsupported(path, "runtime", "special")  # /dev/null: there only while it ran
            else:
                self.missing.append(path)
            return
        relinked: list[str] = []
        try:
            with tarfile.open(fileobj=ChunkReader(response.iter_content(READ_CHUNK)), mode="r|", bufsize=STREAM_BUFFER) as tar:
                for member in tar:
                    if not self._take(tar, member, posixpath.dirname(path), relinked):
                        self._left_out("read_limit")  # the rest of this stream, unread
                        break
        finally:
            response.close()
        for name in relinked:
            self._copy_linked(name)

    def _copy_linked(self, name: str) -> None:
        """A hard link of the container's, collected as a file of its own: a reader copying
        one path out of the archive must not find its data behind a name it did not take."""
        response = archive_stream(self.client, self.container_id, "/" + name)
        if response is None:  # its file is gone (the container cannot change once ended)
            self._unsupported("/" + name, "hardlink", "unsupported")
            return
        try:
            with tarfile.open(fileobj=ChunkReader(response.iter_content(READ_CHUNK)), mode="r|", bufsize=STREAM_BUFFER) as tar:
                member = tar.next()
                if member is not None and member.isreg():
                    if not self._take(tar, member, posixpath.dirname("/" + name), []):
                        self._left_out("read_limit")
                else:
                    self._unsupported("/" + name, "hardlink", "unsupported")
        finally:
            response.close()

    def _take(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: str, relinked: list[str]) -> bool:
        """Copy one member if it fits; False to stop reading this path (past the skip bound).
        Hard links are put on ``relinked``, to be collected as files once this stream is done."""
        name = _rebased(parent, member.name)
        if name is None:
            shown = posixpath.join(parent, member.name.rstrip("/"))
            self._unsupported(shown, "dir" if member.isdir() else _TYPES.get(member.type, "file"), "unsupported")
            if member.isreg() and member.size > 0:
                return self._read_past(member.size)
            return True
        if member.isreg():
            kind, size, link = tarfile.REGTYPE, member.size, ""
        elif member.isdir():
            kind, size, link = tarfile.DIRTYPE, 0, ""
        elif member.issym():
            kind, size, link = tarfile.SYMTYPE, 0, member.linkname
        elif member.islnk():
            relinked.append(name)
            return True
        else:
            self._unsupported("/" + name, _special_type(member), "special")  # never collected, by design
            return True
        if len(self.files) >= MAX_OUTPUT_ENTRIES or self.used + size > self.limit:
            self._left_out("entries" if len(self.files) >= MAX_OUTPUT_ENTRIES else "bytes")
            return self._read_past(size)
        info = new_info(name, kind, size=size, mode=member.mode, mtime=member.mtime, linkname=link)
        self._write(header(info))
        if kind == tarfile.REGTYPE:
            for data in member_data(tar, member):
                self._write(data)
            self._write(padding(size))
        self.used += size
        self.files.append(OutputFile(path="/" + name, size=size, type=_TYPES[kind], link=link or None))
        return True

    def _read_past(self, size: int) -> bool:
        """Whether a member of ``size`` bytes that is not kept may be read past (tarfile does it
        when the next member is asked for): not when that would take the bytes read past over
        MAX_SKIPPED_BYTES; then the stream is closed before its data is read."""
        if self.skipped + size > MAX_SKIPPED_BYTES:
            return False
        self.skipped += size
        return True

    def _write(self, data: bytes) -> None:
        self.written += len(data)
        chunk = self._out.add(data)
        if chunk:
            self.sink.write(chunk)

    def finish(self) -> int:
        """End the archive and commit it; its length in bytes."""
        self._write(END_OF_ARCHIVE)
        rest = self._out.flush()
        if rest:
            self.sink.write(rest)
        self.sink.commit()
        return self.written


_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.LNKTYPE: "hardlink"}


def _rebased(parent: str, name: str) -> str | None:
    """The entry name of a member Docker named relative to the requested path's parent; None
    when it is not a plain path or its container path is over MAX_OUTPUT_PATH_BYTES."""
    name = name.rstrip("/")
    full = entry_name(posixpath.join(parent, name)) if name else ""
    return plain_name(full, max_bytes=MAX_OUTPUT_PATH_BYTES - 1)  # the entry name has no leading '/'


__all__ = ["MAX_SKIPPED_BYTES", "Collector", "OutputSink", "archive_stream"]
