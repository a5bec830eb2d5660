"""Files in and out of a container, through Docker's archive API.

Inputs go in after create and before start with ``PUT /containers/ID/archive``
(docker-py's ``put_archive``), outputs come out after the container has ended
with ``GET /containers/ID/archive`` (``get_archive``), both streamed. The daemon
reads and writes the *container's* filesystem (its root is the container's, so a
symlink to ``/etc/passwd`` in an output path is the container's file, never the
host's), exactly as ``docker cp`` does.

Where the archives come from and go to (Redis, for the worker) is the caller's:
the executor is handed an ``ExecutionFiles`` with a function opening the input
archive and a sink for the output archive, and knows nothing of Redis. How outputs
are collected, and what is left out and flagged, is ``collect.py``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from docker.errors import APIError

from schemas import ExecutionRequest
from schemas.placement import input_extraction_dir

from .archive import InputArchive, InputsRejected
from .client import DockerClient
from .collect import Collector, OutputSink, archive_stream
from .errors import DAEMON_ERRORS, DaemonError, StartError
from .pathstat import what_is_at
from .refusals import explain_put_refusal
from .userdb import container_user

log = logging.getLogger(__name__)


class InputsUnavailable(StartError):
    """The input archive could not be read from where it is kept: the execution ends ``error``."""

    code = "inputs_unavailable"


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
    # The request's own output_files_limit_bytes when the worker's policy lowered it
    # (DOCKRQ_MAX_OUTPUT_FILES_BYTES): the result says the limit was capped.
    requested_output_limit: int | None = None

    def put_inputs(self, client: DockerClient, container_id: str, request: ExecutionRequest) -> None:
        """Stream the checked input archive into the created container, owned by its user.

        Raises UserNotFound (the user or group is in neither the image's nor an input's
        /etc/passwd, /etc/group: ``userdb.container_user``), InputsRejected (archive missing or breaking a rule: see
        ``archive.InputArchive``), InputPathInvalid (an input would replace a directory of the container
        by a file or a file by a directory: ``refusals.input_kind_refusal``; or the daemon refused its
        path), InputsUnavailable (its store failed) or DaemonError.
        """
        if request.inputs is None:
            return
        if self.open_inputs is None:
            raise InputsRejected("inputs: the request announces inputs but no input archive was given")
        # who owns them: the user resolved against the /etc/passwd and /etc/group the container
        # will have at start, an input's over the image's; an unknown name is user_not_found (userdb.py)
        uid, gid = container_user(client, container_id, request.inputs, self.open_inputs)
        # What the container has at each input path (bind mounts mounted for it): an input
        # replacing a directory by a file or a file by a directory is refused in the stream,
        # before that entry is sent (archive.InputArchive, refusals.input_kind_refusal).
        existing = {path: what_is_at(client, container_id, path) for path in request.inputs.paths}
        # Docker checks the extraction directory, not the entries: a read-only container takes
        # inputs only put *at* a writable bind mount (schemas/placement.py), one PUT per mount.
        groups: dict[str, list[str]] = {}
        for path in request.inputs.paths:
            where = input_extraction_dir(path, request.tmpfs, request.mounts, request.read_only)
            groups.setdefault(where, []).append(path)
        for base, paths in sorted(groups.items()):
            only = None if len(groups) == 1 else frozenset(paths)
            self._put(client, container_id, InputArchive(request.inputs, uid, gid, existing), only, base)

    def _put(self, client: DockerClient, container_id: str, checker: InputArchive,
             only: frozenset[str] | None, base: str) -> None:
        """One ``PUT /containers/ID/archive?path=base`` of the checked archive's entries of ``only``."""
        assert self.open_inputs is not None
        failed: list[StartError] = []  # what cut the upload short, seen from inside the body

        def body() -> Iterator[bytes]:
            try:
                yield from checker.stream(source, only, base)
            except StartError as exc:  # InputsRejected, InputPathInvalid (an input's kind)
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
        limit = request.output_files_limit_bytes
        capped = self.requested_output_limit is not None and self.requested_output_limit > limit
        applied = {"output_files_limit_bytes": limit, "output_files_limit_capped": capped}
        collector = Collector(client, container_id, limit, self.outputs)
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
                    "outputs_truncated_by": ["error"], "outputs_skipped": [], "outputs_archive_bytes": None, **applied}
        return {
            "output_files": collector.files,
            "outputs_missing": collector.missing,
            "outputs_truncated": collector.truncated,
            "outputs_truncated_by": collector.truncated_by,
            "outputs_skipped": collector.skipped_entries,
            "outputs_archive_bytes": archive_bytes,
            **applied,
        }


__all__ = ["ExecutionFiles", "InputsRejected", "InputsUnavailable", "OutputSink", "archive_stream", "container_user"]
