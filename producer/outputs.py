"""The producer's reading of output files: ``Producer.outputs``, ``copy_out``, ``outputs_archive``.

A mixin of ``Producer`` (producer/client.py), on its Redis client and keys; the
archive handling itself is in ``files.py`` and ``extract.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from schemas import Outcome
from schemas.text import quoted_name

from .cp_paths import cp_source
from .cp_tar import write_path_tar
from .errors import CopyRefused
from .extract import ExtractReport
from .copy_dest import collected_kind, copy_selection
from .files import OutputsUnavailable, announced, archive_reader, extract_outputs

if TYPE_CHECKING:
    from schemas import Keys


class OutputsMixin:
    """Getting an ended execution's output files (needs ``_client``, ``keys``, ``_outcome``,
    ``_check_id`` and ``_require_known`` from ``Producer``)."""

    _client: redis.Redis
    keys: Keys

    if TYPE_CHECKING:
        def _check_id(self, execution_id: str) -> None: ...

        def _outcome(self, execution_id: str) -> Outcome | None: ...

        def _require_known(self, execution_id: str) -> None: ...

    def _ended(self, execution_id: str) -> Outcome:
        self._check_id(execution_id)
        outcome = self._outcome(execution_id)
        if outcome is None:
            self._require_known(execution_id)
            raise OutputsUnavailable(f"execution {execution_id} has not ended yet")
        return outcome

    def _requested_outputs(self, execution_id: str) -> list[str] | None:
        """The request's ``outputs`` (its rq job's first argument), for ``cp``'s words only;
        None when the rq job is gone (deleted, expired) or cannot be read."""
        try:
            raw = self._client.hgetall(Job.key_for(execution_id))
            if not raw:
                return None
            job = Job(execution_id, connection=redis.Redis(), serializer=JSONSerializer)  # only decodes: never connects
            job.restore(raw)
            request = job.args[0] if job.args else None
            outputs = request.get("outputs") if isinstance(request, dict) else None
        except Exception:  # noqa: BLE001 - words for a message: an unreadable job is an unknown request
            return None
        return [p for p in outputs if isinstance(p, str)] if isinstance(outputs, list) else []

    def outputs(
        self, execution_id: str, dest_dir: str | Path, *, on_skip: Callable[[str], None] | None = None
    ) -> ExtractReport:
        """Extract an ended execution's output files into ``dest_dir`` (created if missing),
        each under its container path (``/out/r.json`` -> ``dest_dir/out/r.json``).

        Safe against hostile archives (``producer/extract.py``): what would leave
        ``dest_dir``, replace a directory by a file or a file by a directory, or fails on
        the local disk (name too long, permission) is skipped and the rest written. The
        returned ``ExtractReport`` lists ``written`` paths and ``skipped`` lines (one per
        entry not written; ``report.complete`` is False if any); ``on_skip`` gets each
        skip line as it happens. Raises CopyRefused when ``dest_dir`` is there and is not a
        directory (nothing written), OutputsUnavailable (not ended, none collected,
        expired), ArchiveRefused (its ``report`` has what was done before it stopped) or
        ExecutionNotFound.
        """
        outcome = self._ended(execution_id)
        if os.path.lexists(dest_dir) and not os.path.isdir(dest_dir):
            raise CopyRefused(f"{dest_dir}: not a directory; nothing copied")
        return extract_outputs(self._client, self.keys.outputs(execution_id), outcome, Path(dest_dir), on_skip=on_skip)

    def copy_out(
        self, execution_id: str, container_path: str, dest: str | Path, *, on_skip: Callable[[str], None] | None = None
    ) -> ExtractReport:
        """``dockrq cp ID:CONTAINER_PATH DEST``: one collected path (or ``/`` for all), placed by
        ``docker cp``'s destination rules (``producer/copy_dest.py``): into an existing
        directory ``dest`` under its own name; over an existing file ``dest`` (a file only);
        otherwise as ``dest``, whose parent directory must exist. Raises CopyRefused, with
        nothing written, for a directory onto a file, a file onto a missing ``dest/``, or a
        missing parent; otherwise returns and raises as ``outputs`` (skips are in the
        report, never silent)."""
        outcome = self._ended(execution_id)
        container_path = _collected_path(outcome, container_path, self._requested_outputs(execution_id))
        root, rename, link_root = copy_selection(outcome, container_path, dest)  # a str keeps its trailing '/'
        return extract_outputs(
            self._client, self.keys.outputs(execution_id), outcome, root, rename, on_skip=on_skip, link_root=link_root
        )

    def copy_out_archive(self, execution_id: str, container_path: str, out: BinaryIO) -> int:
        """``dockrq cp ID:CONTAINER_PATH -``: write to the binary file object ``out`` a tar of one
        collected path as ``docker cp CONTAINER:PATH -`` does (entries named from the path's last
        component: ``/work/out`` gives ``out``, ``out/...``; ``/`` gives the archive as stored),
        streamed. Returns the number of entries written. Raises as ``copy_out`` (not CopyRefused)."""
        outcome = self._ended(execution_id)
        container_path = _collected_path(outcome, container_path, self._requested_outputs(execution_id))  # unless collected
        size, _, _ = announced(outcome)
        key = self.keys.outputs(execution_id)
        if int(self._client.strlen(key)) != size:
            raise OutputsUnavailable(f"execution {execution_id}: {key} is gone or not the {size} bytes announced")
        reader = archive_reader(self._client, key, size)
        try:
            if container_path == "/":
                entries = len(outcome.result.output_files) if outcome.result else 0
                while chunk := reader.read(1024 * 1024):
                    out.write(chunk)
                return entries
            return write_path_tar(reader, out, container_path)
        finally:
            reader.close()

    def outputs_archive(self, execution_id: str, out: Any = None) -> bytes | int:
        """The output archive as stored (a tar; format in the README): its bytes, or with a binary
        file object ``out``, written there in chunks (memory stays flat) and its length returned."""
        outcome = self._ended(execution_id)
        size, _, _ = announced(outcome)
        key = self.keys.outputs(execution_id)
        if int(self._client.strlen(key)) != size:
            raise OutputsUnavailable(f"execution {execution_id}: {key} is gone or not the {size} bytes announced")
        reader = archive_reader(self._client, key, size)
        if out is None:
            return reader.read()
        written = 0
        while chunk := reader.read(1024 * 1024):
            out.write(chunk)
            written += len(chunk)
        return written



def _collected_path(outcome: Outcome, given: str, requested: list[str] | None = None) -> str:
    """``given`` in one of docker cp's forms (``producer/cp_paths.py``: relative to ``/``, a trailing
    ``/`` asserting a directory), normalised; OutputsUnavailable when malformed, not collected, or
    a file named with a trailing ``/``."""
    try:
        path, wants_dir = cp_source(given)
    except ValueError as exc:
        raise OutputsUnavailable(str(exc)) from None
    if not collected_kind(outcome, path, requested) and wants_dir:
        raise OutputsUnavailable(f"{quoted_name(given[:200])}: not a directory (a trailing '/' names one)")
    return path
