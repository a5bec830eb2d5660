"""The Redis side of files in and out: where an execution's archives are kept.

The input archive (``P:exec:ID:inputs``) is read in ``GETRANGE`` chunks while it
streams into the container; the output archive is ``APPEND``ed in chunks to
``P:exec:ID:outputs:partial`` and renamed to ``P:exec:ID:outputs`` whole once
complete (``RENAME``, one command), so a reader never sees a partial archive.
Both expire with the retention. The executor (``worker.executor.files``) does
the Docker side and knows nothing of this module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from schemas import ARCHIVE_CHUNK_BYTES, ChunkReader, ExecutionRequest, Keys
from schemas.files import archive_chunks
from worker.executor import RequestRejected
from worker.executor.files import ExecutionFiles

if TYPE_CHECKING:
    from redis import Redis


class InputsMissing(RequestRejected):
    """The input archive the request announces is not in Redis, or not the announced size."""

    code = "invalid_inputs"


def prefetched(chunks: Iterable[bytes], depth: int = 2) -> Iterator[bytes]:
    """``chunks``, read ahead by a thread of its own (at most ``depth`` chunks waiting), so
    Redis reads overlap what the consumer does with them (Docker's upload). An error of the
    reader is raised to the consumer; closing this generator stops the reader."""
    slots: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[bytes | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer((chunk, None)):
                    return
            offer((None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            offer((None, exc))

    reader = threading.Thread(target=read, name="dockrq-archive-read", daemon=True)
    reader.start()
    try:
        while True:
            chunk, error = slots.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        reader.join(5)


class RedisArchiveSink:
    """An output archive written to Redis in chunks and renamed into place whole.

    Implements ``worker.executor.files.OutputSink``. Writes are buffered to
    ``ARCHIVE_CHUNK_BYTES`` and appended to the partial key, which expires with the
    retention from the first write, so an archive a dying worker leaves behind goes too.
    """

    def __init__(self, connection: Redis, keys: Keys, execution_id: str, retention_seconds: int) -> None:
        self.connection = connection
        self.partial = keys.outputs_partial(execution_id)
        self.final = keys.outputs(execution_id)
        self.retention_seconds = int(retention_seconds)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._started = False

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= ARCHIVE_CHUNK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        with self.connection.pipeline(transaction=False) as pipe:
            if not self._started:
                pipe.delete(self.partial)  # an earlier attempt's leftovers
            pipe.append(self.partial, data)
            if not self._started:
                pipe.expire(self.partial, self.retention_seconds)
            pipe.execute()
        self._started = True

    def commit(self) -> None:
        self._flush()
        with self.connection.pipeline() as pipe:  # MULTI: renamed and given its expiry together
            pipe.rename(self.partial, self.final)
            pipe.expire(self.final, self.retention_seconds)
            pipe.execute()

    def abort(self) -> None:
        self._buffer, self._buffered = [], 0
        self.connection.delete(self.partial)


def execution_files(
    connection: Redis, keys: Keys, request: ExecutionRequest, retention_seconds: int,
    requested_output_limit: int | None = None,
) -> ExecutionFiles | None:
    """What the executor needs to move ``request``'s files through Redis; None when it has none.
    ``requested_output_limit``: the request's output_files_limit_bytes before the worker's
    policy capped it (the result then says ``output_files_limit_capped``).

    Raises InputsMissing (before anything reaches Docker) when the announced input
    archive is not in Redis or not of the announced size.
    """
    if request.inputs is None and not request.outputs:
        return None
    files = ExecutionFiles(requested_output_limit=requested_output_limit)
    if request.inputs is not None:
        key = keys.inputs(request.execution_id)
        size = int(connection.strlen(key))
        if size == 0:
            raise InputsMissing(f"inputs: no input archive at {key} (never written, or expired)")
        if size != request.inputs.archive_bytes:
            raise InputsMissing(
                f"inputs: the archive at {key} is {size} bytes, the request announces {request.inputs.archive_bytes}"
            )
        files.open_inputs = lambda: ChunkReader(prefetched(archive_chunks(connection, key, size)))
    if request.outputs:
        files.outputs = RedisArchiveSink(connection, keys, request.execution_id, retention_seconds)
    return files
