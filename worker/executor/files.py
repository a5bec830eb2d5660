"""Files in and out of a container, through Docker's archive API.

Inputs go in after create and before start with ``PUT /containers/ID/archive``
(docker-py's ``put_archive``), outputs come out after the container has ended
with ``GET /containers/ID/archive`` (``get_archive``), both streamed. The daemon
reads and writes the *container's* filesystem (its root is the container's, so a
symlink to ``/etc/passwd`` in an output path is the container's file, never the
host's), exactly as ``docker cp`` does.

Where the archives come from and go to (Redis, for the worker) is the caller's:
the executor is handed an ``ExecutionFiles`` with a function opening the input
archive and a sink for the output archive, and knows nothing of Redis.
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import requests
from docker.errors import APIError, NotFound

from schemas import MAX_OUTPUT_ENTRIES, ChunkReader, ExecutionRequest, OutputFile, entry_name
from schemas.placement import input_extraction_dir
from schemas.text import quoted_name

from .archive import (
    END_OF_ARCHIVE,
    STREAM_BUFFER,
    Coalesce,
    InputArchive,
    InputsRejected,
    header,
    member_data,
    new_info,
    padding,
    plain_name,
)
from .client import DockerClient
from .errors import DAEMON_ERRORS, DaemonError, StartError
from .refusals import explain_put_refusal
from .userdb import container_user

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024


class InputsUnavailable(StartError):
    """The input archive could not be read from where it is kept: the execution ends ``error``."""

    code = "inputs_unavailable"


# Members too large for the room left are read past and dropped; past this many such
# bytes the remaining output paths are left out (a container cannot keep a worker
# streaming a 100 GB file it will not keep).
MAX_SKIPPED_BYTES = 256 * 1024 * 1024


class OutputSink(Protocol):
    """Where the output archive goes: bytes appended in order, then committed whole or aborted."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


@dataclass
class ExecutionFiles:
    """What the executor moves for one execution besides its container.

    ``open_inputs()`` returns a binary file object over the input archive that
    ``request.inputs`` announces (required when the request has inputs);
    ``outputs`` receives the archive of ``request.outputs`` (without a sink
    nothing is collected).
    """

    open_inputs: Callable[[], BinaryIO] | None = None
    outputs: OutputSink | None = None

    def put_inputs(self, client: DockerClient, container_id: str, request: ExecutionRequest) -> None:
        """Stream the checked input archive into the created container, owned by its user.

        Raises UserNotFound (the user or group is in neither the image's nor an input's
        /etc/passwd, /etc/group: ``userdb.container_user``), InputsRejected (archive missing or breaking a rule: see
        ``archive.InputArchive``), InputsUnavailable (its store failed) or DaemonError.
        """
        if request.inputs is None:
            return
        if self.open_inputs is None:
            raise InputsRejected("inputs: the request announces inputs but no input archive was given")
        # who owns them: the user resolved against the /etc/passwd and /etc/group the container
        # will have at start, an input's over the image's; an unknown name is user_not_found (userdb.py)
        uid, gid = container_user(client, container_id, request.inputs, self.open_inputs)
        # Docker checks the extraction directory, not the entries: a read-only container takes
        # inputs only put *at* a writable bind mount (schemas/placement.py), one PUT per mount.
        groups: dict[str, list[str]] = {}
        for path in request.inputs.paths:
            where = input_extraction_dir(path, request.tmpfs, request.mounts, request.read_only)
            groups.setdefault(where, []).append(path)
        for base, paths in sorted(groups.items()):
            only = None if len(groups) == 1 else frozenset(paths)
            self._put(client, container_id, InputArchive(request.inputs, uid, gid), only, base)

    def _put(self, client: DockerClient, container_id: str, checker: InputArchive,
             only: frozenset[str] | None, base: str) -> None:
        """One ``PUT /containers/ID/archive?path=base`` of the checked archive's entries of ``only``."""
        assert self.open_inputs is not None
        failed: list[StartError] = []  # what cut the upload short, seen from inside the body

        def body() -> Iterator[bytes]:
            try:
                yield from checker.stream(source, only, base)
            except InputsRejected as exc:
                failed.append(exc)
                raise
            except Exception as exc:  # the archive's store failed (e.g. Redis away)
                failed.append(InputsUnavailable(f"inputs: reading the input archive failed: {exc}"))
                raise

        try:
            source = self.open_inputs()
        except InputsRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - the store's own errors
            raise InputsUnavailable(f"inputs: reading the input archive failed: {exc}") from None
        try:
            url = client.api._url("/containers/{0}/archive", container_id)
            response = client.api._put(url, params={"path": base}, data=body())
            client.api._raise_for_status(response)
        except Exception as exc:  # noqa: BLE001 - sorted out below, outside this handler
            if not failed and isinstance(exc, APIError):
                refusal = explain_put_refusal(exc, checker.spec.paths)  # refusals.py: input_path_*
                if refusal is not None:
                    failed.append(refusal)
            if not failed and isinstance(exc, DAEMON_ERRORS):
                raise DaemonError(f"putting the inputs into the container failed: {exc}") from exc
            if not failed:
                failed.append(InputsUnavailable(f"inputs: {exc}"))
        finally:
            source.close()
        if failed:
            # Raised with no context: a connection cut by our own abort is not the daemon
            # going away (the handler would start again), it is this archive's doing.
            error = failed[0]
            error.__context__ = error.__cause__ = None
            raise error

    def collect_outputs(self, client: DockerClient, container_id: str, request: ExecutionRequest) -> dict[str, Any]:
        """Collect ``request.outputs`` into the sink; the result fields that describe them.

        Never raises: a daemon failure on the way aborts the archive (no partial
        archive is ever committed) and reports everything as left out.
        """
        if not request.outputs or self.outputs is None:
            return {}
        collector = _Collector(client, container_id, request.output_files_limit_bytes, self.outputs)
        try:
            client.inspect(container_id)  # gone (a daemon restart): its paths are not "missing"
            for path in request.outputs:
                collector.collect(path)
            archive_bytes = collector.finish()
        except Exception as exc:  # noqa: BLE001 - outputs must never crash an execution's end
            log.warning("execution %s: collecting outputs failed, none kept: %s", request.execution_id, exc)
            try:
                self.outputs.abort()
            except Exception as abort_exc:  # noqa: BLE001
                log.warning("execution %s: dropping the partial output archive failed: %s", request.execution_id, abort_exc)
            return {"output_files": [], "outputs_missing": [], "outputs_truncated": True,
                    "outputs_truncated_by": ["error"], "outputs_archive_bytes": None}
        return {
            "output_files": collector.files,
            "outputs_missing": collector.missing,
            "outputs_truncated": collector.truncated,
            "outputs_truncated_by": collector.truncated_by,
            "outputs_archive_bytes": archive_bytes,
        }


@dataclass
class _Collector:
    """Builds the output archive: whole entries only, file contents within ``limit``."""

    client: DockerClient
    container_id: str
    limit: int
    sink: OutputSink
    files: list[OutputFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    truncated: bool = False
    truncated_by: list[str] = field(default_factory=list)  # "entries" / "bytes": which limit left things out
    used: int = 0
    skipped: int = 0
    written: int = 0
    _names: set[str] = field(default_factory=set)
    _out: Coalesce = field(default_factory=Coalesce)

    def _left_out(self, limit: str) -> None:
        self.truncated = True
        if limit not in self.truncated_by:
            self.truncated_by.append(limit)

    def collect(self, path: str) -> None:
        if len(self.files) >= MAX_OUTPUT_ENTRIES:
            self._left_out("entries")
            return
        if self.skipped > MAX_SKIPPED_BYTES:
            self._left_out("bytes")
            return
        response = archive_stream(self.client, self.container_id, path)
        if response is None:
            self.missing.append(path)
            return
        relinked: list[str] = []
        try:
            with tarfile.open(fileobj=ChunkReader(response.iter_content(READ_CHUNK)), mode="r|", bufsize=STREAM_BUFFER) as tar:
                for member in tar:
                    if not self._take(tar, member, posixpath.dirname(path), relinked):
                        return  # past the skip bound: drop the rest of this stream
        finally:
            response.close()
        for name in relinked:
            self._copy_linked(name)

    def _copy_linked(self, name: str) -> None:
        """A hard link of the container's, collected as a file of its own: a reader copying
        one path out of the archive must not find its data behind a name it did not take."""
        response = archive_stream(self.client, self.container_id, "/" + name)
        if response is None:
            return
        try:
            with tarfile.open(fileobj=ChunkReader(response.iter_content(READ_CHUNK)), mode="r|", bufsize=STREAM_BUFFER) as tar:
                member = tar.next()
                if member is not None and member.isreg():
                    self._take(tar, member, posixpath.dirname("/" + name), [])
        finally:
            response.close()

    def _take(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: str, relinked: list[str]) -> bool:
        """Copy one member if it fits; False to stop reading this path. Hard links are put
        on ``relinked``, to be collected as files once this stream is done."""
        name = _rebased(parent, member.name)
        if name is None:
            log.warning("output entry %s skipped: not a plain path", quoted_name(member.name[:200]))
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
            return True  # devices, fifos, sockets are not collected
        if len(self.files) >= MAX_OUTPUT_ENTRIES or self.used + size > self.limit:
            self._left_out("entries" if len(self.files) >= MAX_OUTPUT_ENTRIES else "bytes")
            self.skipped += size
            return self.skipped <= MAX_SKIPPED_BYTES
        info = new_info(name, kind, size=size, mode=member.mode, mtime=member.mtime, linkname=link)
        self._write(header(info))
        if kind == tarfile.REGTYPE:
            for data in member_data(tar, member):
                self._write(data)
            self._write(padding(size))
        self.used += size
        self._names.add(name)
        self.files.append(OutputFile(path="/" + name, size=size, type=_TYPES[kind], link=link or None))
        return True

    def _write(self, data: bytes) -> None:
        self.written += len(data)
        chunk = self._out.add(data)
        if chunk:
            self.sink.write(chunk)

    def finish(self) -> int:
        self._write(END_OF_ARCHIVE)
        rest = self._out.flush()
        if rest:
            self.sink.write(rest)
        self.sink.commit()
        return self.written


_TYPES = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}


def _rebased(parent: str, name: str) -> str | None:
    """The entry name of a member Docker named relative to the requested path's parent."""
    name = name.rstrip("/")
    full = entry_name(posixpath.join(parent, name)) if name else ""
    return plain_name(full)


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


__all__ = ["ExecutionFiles", "InputsRejected", "InputsUnavailable", "OutputSink", "archive_stream", "container_user"]
