"""The producer's reading of output files: ``Producer.outputs``, ``copy_out``, ``outputs_archive``.

A mixin of ``Producer`` (producer/client.py), on its Redis client and keys; the
archive handling itself is in ``files.py`` and ``extract.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas import Outcome

from .extract import ExtractReport
from .files import OutputsUnavailable, announced, archive_reader, copy_selection, extract_outputs

if TYPE_CHECKING:
    import redis

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

    def outputs(self, execution_id: str, dest_dir: str | Path) -> ExtractReport:
        """Extract an ended execution's output files into ``dest_dir`` (created if missing),
        each under its container path (``/out/r.json`` -> ``dest_dir/out/r.json``).

        Safe against hostile archives (``producer/extract.py``): what would leave
        ``dest_dir`` is skipped and listed in the report's ``skipped``. Raises
        OutputsUnavailable (not ended, none collected, expired), ArchiveRefused or
        ExecutionNotFound.
        """
        outcome = self._ended(execution_id)
        return extract_outputs(self._client, self.keys.outputs(execution_id), outcome, Path(dest_dir))

    def copy_out(self, execution_id: str, container_path: str, dest: str | Path) -> ExtractReport:
        """``dockrq cp ID:CONTAINER_PATH DEST``: one collected path (or ``/`` for all), placed as
        ``docker cp`` places it: into an existing directory ``dest`` under its own name,
        otherwise as ``dest``. Raises as ``outputs``."""
        outcome = self._ended(execution_id)
        root, rename = copy_selection(outcome, container_path, Path(dest))
        return extract_outputs(self._client, self.keys.outputs(execution_id), outcome, root, rename)

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

