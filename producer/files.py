"""The producer's side of files in and out: input archives it writes, output archives it reads.

Inputs (``Producer.submit(..., inputs={CONTAINER_PATH: local path or bytes})``)
become one tar archive, built into a spooled temporary file (memory up to one
chunk, the rest on disk), checked against ``max_input_bytes`` *before* anything
is written, then copied to ``P:exec:ID:inputs`` in chunks (``SETRANGE``, last
chunk first, each reply and a counter checked: InputsLost) ahead of the enqueue. Outputs are
read back from ``P:exec:ID:outputs`` in ``GETRANGE`` chunks and extracted with
``extract.safe_extract``. The format is the wire contract's (``schemas/files.py``).
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Union

import redis

from schemas import (
    ARCHIVE_CHUNK_BYTES,
    MAX_INPUT_ENTRIES,
    ChunkReader,
    InputsSpec,
    Outcome,
    check_container_path,
    entry_name,
)
from schemas.files import MAX_FILE_PATHS, MAX_PATH_BYTES, ArchiveGone, archive_chunks, overlapping
from schemas.placement import runtime_problem
from schemas.text import shown_path

from .errors import InvalidRequest, ProducerError
from .extract import ExtractReport, safe_extract
from .input_writes import InputsLost, write_input_archive, write_input_archive_async

InputValue = Union[str, os.PathLike, "FollowLink", bytes, bytearray, memoryview]


class InputsTooLarge(InvalidRequest):
    """The input files are larger than the producer's ``max_input_bytes``; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"inputs: at least {size} bytes of files, above the limit of {limit} bytes "
            f"(max_input_bytes, DOCKRQ_MAX_INPUT_BYTES)"
        )


class OutputsUnavailable(ProducerError):
    """The execution has no output archive to read: not ended, asked for none, or expired
    (also while it is read: it vanished from Redis meanwhile)."""


@dataclass
class InputArchive:
    """A built input archive: the spooled tar and its announcement (``InputsSpec``)."""

    file: IO[bytes]
    spec: InputsSpec

    def chunks(self, size: int = ARCHIVE_CHUNK_BYTES) -> Iterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(size):
            yield chunk

    def chunks_last_first(self, size: int = ARCHIVE_CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
        """``(offset, chunk)`` of the archive, its last chunk first, then each one before it."""
        total = self.spec.archive_bytes
        for offset in range((total - 1) // size * size, -1, -size):
            self.file.seek(offset)
            yield offset, self.file.read(min(size, total - offset))

    def close(self) -> None:
        self.file.close()


class _Builder:
    def __init__(self, tar: tarfile.TarFile, limit: int) -> None:
        self.tar = tar
        self.limit = limit
        self.entries = 0
        self.bytes = 0
        self._fds: dict[int, int] = {}  # open directory -> its subdirectories not yet opened (close() ends all)
        # (st_dev, st_ino) -> the entry name of the first of its hard links, within one input path
        # (each path may go in with its own PUT: a link never names another path's entry)
        self._links: dict[tuple[int, int], str] = {}

    def _count(self, name: str, size: int = 0, local: Path | None = None) -> None:
        if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise InvalidRequest(f"inputs: container path /{name[:80]}... is longer than {MAX_PATH_BYTES} bytes")
        problem = runtime_problem("/" + name)  # also an entry of a directory put at /etc or /
        if problem is not None:
            source = f" (from {shown_path(local)})" if local is not None else ""
            raise InvalidRequest(f"inputs: {problem}{source}")
        self.entries += 1
        self.bytes += size
        if self.entries > MAX_INPUT_ENTRIES:
            raise InvalidRequest(f"inputs: more than {MAX_INPUT_ENTRIES} files and directories")
        if self.bytes > self.limit:
            raise InputsTooLarge(self.bytes, self.limit)

    def _info(self, name: str, kind: bytes, mode: int, mtime: float, size: int = 0, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode & 0o777, int(max(0, mtime)), size, link
        info.uid = info.gid = 0  # the worker gives every entry to the container's user
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        import io
        import time

        self._count(name, len(data))
        self.tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, time.time(), len(data)), io.BytesIO(data))

    def add_path(self, name: str, local: Path, follow_link: bool = False) -> None:
        """A local file, directory or symlink as ``name``. ``local`` itself, if a symlink, is
        put in as a symlink unless ``follow_link`` (``docker cp`` and its ``-L``)."""
        self._links.clear()
        try:
            info = os.stat(local) if follow_link else os.lstat(local)
        except OSError as exc:
            raise InvalidRequest(f"inputs: {shown_path(local)}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(info.st_mode):
            self._add_tree(name, local, info, follow_link)
        elif stat.S_ISREG(info.st_mode):
            self._add_file(name, local, info, follow_link)
        elif stat.S_ISLNK(info.st_mode):
            self._add_link(name, local, info)
        else:
            raise InvalidRequest(f"inputs: {shown_path(local)} is not a regular file or a directory")

    def _add_link(self, name: str, local: Path, info: os.stat_result, dir_fd: int | None = None) -> None:
        try:
            link = os.readlink(local.name if dir_fd is not None else local, dir_fd=dir_fd)
        except OSError as exc:
            raise InvalidRequest(f"inputs: reading {shown_path(local)} failed: {exc.strerror or exc}") from None
        if len(link.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            raise InvalidRequest(f"inputs: the target of symlink {shown_path(local)} is longer than {MAX_PATH_BYTES} bytes")
        self._count(name, local=local)
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, info.st_mtime, link=link))

    def _add_file(
        self, name: str, local: Path, info: os.stat_result, follow: bool = False, dir_fd: int | None = None
    ) -> None:
        """Read a regular file; inside a directory (``dir_fd``) it is opened without following a
        symlink and must still be the file listed, so a file swapped for a symlink meanwhile is
        refused, never read through. A file with more than one link (``st_nlink``) seen before
        within this input path goes in as a hard link (``LNKTYPE``, no data) to its first entry,
        as ``docker cp`` (moby pkg/archive) keeps them; it adds an entry, no file bytes (the
        worker counts regular files' sizes only)."""
        first = self._links.get((info.st_dev, info.st_ino)) if info.st_nlink > 1 else None
        if first is not None:
            self._count(name, 0, local)
            self.tar.addfile(self._info(name, tarfile.LNKTYPE, info.st_mode, info.st_mtime, link=first))
            return
        if info.st_nlink > 1:
            self._links[(info.st_dev, info.st_ino)] = name
        self._count(name, info.st_size, local)
        flags = os.O_RDONLY | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(local.name if dir_fd is not None else local, flags, dir_fd=dir_fd)
            with open(fd, "rb") as source:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                    raise InvalidRequest(f"inputs: {shown_path(local)} changed while it was read")
                self.tar.addfile(self._info(name, tarfile.REGTYPE, info.st_mode, info.st_mtime, info.st_size), source)
        except OSError as exc:
            raise InvalidRequest(f"inputs: reading {shown_path(local)} failed: {exc.strerror or exc}") from None

    def _add_tree(self, name: str, top: Path, info: os.stat_result, follow: bool = False) -> None:
        """Pre-order: each directory before what it holds, as the worker requires. Symlinks
        inside are kept as symlinks (never followed); special files are refused. Every
        directory is opened without following a symlink (``O_NOFOLLOW``, only ``top`` may be
        one, with ``follow``) and read through its descriptor, so nothing outside ``top``
        is read even if the tree changes meanwhile."""
        stack: list[tuple[str, Path, os.stat_result, int | None]] = [(name, top, info, None)]
        while stack:
            name, path, info, parent_fd = stack.pop()
            self._count(name, local=path)
            self.tar.addfile(self._info(name, tarfile.DIRTYPE, info.st_mode, info.st_mtime))
            flags = os.O_RDONLY | os.O_DIRECTORY | (0 if follow and parent_fd is None else os.O_NOFOLLOW)
            try:
                fd = os.open(path.name if parent_fd is not None else path, flags, dir_fd=parent_fd)
            except OSError as exc:
                raise InvalidRequest(f"inputs: reading {shown_path(path)} failed: {exc.strerror or exc}") from None
            self._fds[fd] = 0
            if parent_fd is not None:
                self._release(parent_fd)
            try:
                children = sorted(os.scandir(fd), key=lambda e: e.name)
            except OSError as exc:
                raise InvalidRequest(f"inputs: reading {shown_path(path)} failed: {exc.strerror or exc}") from None
            later = []
            for entry in children:
                child, local = f"{name}/{entry.name}", path / entry.name
                child_info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(child_info.st_mode):
                    later.append((child, local, child_info, fd))
                elif stat.S_ISREG(child_info.st_mode):
                    self._add_file(child, local, child_info, dir_fd=fd)
                elif stat.S_ISLNK(child_info.st_mode):
                    self._add_link(child, local, child_info, dir_fd=fd)
                else:
                    raise InvalidRequest(f"inputs: {shown_path(local)} is not a regular file, directory or symlink")
            self._fds[fd] = len(later) + 1
            self._release(fd)  # open only while a subdirectory still has to be opened through it
            stack.extend(reversed(later))  # popped in name order

    def _release(self, fd: int) -> None:
        self._fds[fd] -= 1
        if self._fds[fd] <= 0:
            del self._fds[fd]
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


@dataclass(frozen=True)
class FollowLink:
    """An input value (``submit(inputs={"/in": FollowLink("data")})``): the local path, followed
    if it is itself a symlink, as ``docker cp -L`` does (``dockrq submit -L``). A plain path
    that is a symlink is put into the container as that symlink. Symlinks inside a
    directory are never followed either way."""

    path: str | os.PathLike[str]


def build_input_archive(inputs: Mapping[str, InputValue], max_input_bytes: int) -> InputArchive:
    """The archive of ``inputs`` (container path -> local file or directory, or bytes).

    Raises InvalidRequest naming the path (bad container path, overlapping paths,
    missing or unreadable local path, special file) or InputsTooLarge, before
    anything is written to Redis. The caller closes the archive.
    """
    if not inputs:
        raise InvalidRequest("inputs: give at least one container path")
    if len(inputs) > MAX_FILE_PATHS:
        raise InvalidRequest(f"inputs: more than {MAX_FILE_PATHS} container paths")
    for target in inputs:
        try:
            check_container_path(target)
        except ValueError as exc:
            raise InvalidRequest(f"inputs: {str(target)[:200]!r}: {exc}") from None
    clash = overlapping(inputs)
    if clash is not None:
        raise InvalidRequest(f"inputs: {clash[1]!r} is {clash[0]!r} or inside it")
    spool = tempfile.SpooledTemporaryFile(max_size=ARCHIVE_CHUNK_BYTES)
    try:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT, copybufsize=ARCHIVE_CHUNK_BYTES) as tar:
            builder = _Builder(tar, max_input_bytes)
            try:
                for target in sorted(inputs):
                    value = inputs[target]
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        builder.add_bytes(entry_name(target), bytes(value))
                    elif isinstance(value, FollowLink):
                        builder.add_path(entry_name(target), Path(value.path), follow_link=True)
                    elif isinstance(value, (str, os.PathLike)):
                        builder.add_path(entry_name(target), Path(value))
                    else:
                        raise InvalidRequest(
                            f"inputs: {target}: give a local path or bytes, not {type(value).__name__}"
                        )
            finally:
                builder.close()
        spec = InputsSpec(paths=sorted(inputs), entries=builder.entries, bytes=builder.bytes, archive_bytes=spool.tell())
    except BaseException:
        spool.close()
        raise
    return InputArchive(spool, spec)


# -- outputs -----------------------------------------------------------------------


def announced(outcome: Outcome) -> tuple[int, int, int]:
    """(archive bytes, entries, file bytes) the outcome announces, or OutputsUnavailable."""
    result, eid = outcome.result, outcome.execution_id
    if result is None or (result.outputs_archive_bytes is None and result.container_id is None):
        # rejected, cancelled before it started, an image it could not have
        raise OutputsUnavailable(f"execution {eid} ended {outcome.status.value} without a container: it has no output files")
    if result.outputs_archive_bytes is None:
        if result.outputs_truncated:
            raise OutputsUnavailable(f"execution {eid}: its output files could not be collected")
        if result.output_files_limit_bytes is None:  # set whenever a worker collected outputs
            raise OutputsUnavailable(f"execution {eid} has no output files: it named no outputs (--output, the request's outputs)")
        raise OutputsUnavailable(f"execution {eid} has no output files")
    files = sum(f.size for f in result.output_files if f.type == "file")
    return result.outputs_archive_bytes, len(result.output_files), files


def archive_reader(client: redis.Redis, key: str, size: int) -> BinaryIO:
    """A file object over the first ``size`` bytes at ``key``, read in ``GETRANGE`` chunks;
    reading raises OutputsUnavailable if the key ends before ``size`` meanwhile."""

    return ChunkReader(_output_chunks(client, key, size))  # type: ignore[return-value]


def _output_chunks(client: redis.Redis, key: str, size: int) -> Iterator[bytes]:
    try:
        yield from archive_chunks(client, key, size)
    except ArchiveGone as exc:
        raise OutputsUnavailable(f"outputs: {exc}") from None


def extract_outputs(
    client: redis.Redis, key: str, outcome: Outcome, dest: Path, rename: Callable[[str], str | None] | None = None,
    on_skip: Callable[[str], None] | None = None, link_root: str | None = None,
) -> ExtractReport:
    """Extract the output archive at ``key`` into ``dest`` with ``extract.safe_extract``."""
    size, entries, file_bytes = announced(outcome)
    stored = int(client.strlen(key))
    if stored == 0:
        raise OutputsUnavailable(f"execution {outcome.execution_id}: its output archive {key} is gone (expired?)")
    if stored != size:
        raise OutputsUnavailable(f"execution {outcome.execution_id}: {key} holds {stored} bytes, the outcome announces {size}")
    reader = archive_reader(client, key, size)
    try:
        return safe_extract(
            reader, dest, rename=rename or (lambda name: name), max_entries=entries, max_file_bytes=file_bytes,
            on_skip=on_skip, link_root=link_root,
        )
    finally:
        reader.close()
