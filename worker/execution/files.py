"""The Redis side of files in and out: where an execution's archives are kept.

The input archive (``P:exec:ID:inputs``) is read in ``GETRANGE`` chunks while it
streams into the container (one that vanishes meanwhile is ``InputsUnavailable``);
the output archive is ``APPEND``ed in chunks to ``P:exec:ID:outputs:partial``,
each reply (the string's length) checked against the bytes written so far, and
renamed to ``P:exec:ID:outputs`` whole once complete, only if it still has them
all (one script), so a reader never sees a partial archive, even when Redis
restarted without persistence meanwhile. Both expire with the retention. The
executor (``worker.executor.files``) does the Docker side and knows nothing of
this module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from schemas import ARCHIVE_CHUNK_BYTES, ChunkReader, ExecutionRequest, Keys
from schemas.files import ArchiveGone, archive_chunks
from worker.executor import RequestRejected
from worker.executor.files import ExecutionFiles, InputsUnavailable

if TYPE_CHECKING:
    from redis import Redis


class InputsMissing(RequestRejected):
    """The input archive the request announces is not in Redis, or not the announced size."""

    code = "invalid_inputs"


class OutputsLost(RuntimeError):
    """Redis lost the partial output archive while it was written (a restart without
    persistence, a delete): it does not hold the bytes appended so far. Collecting fails
    (``outputs_truncated_by: ["error"]``), nothing is kept."""


# KEYS[1] the partial archive, KEYS[2] the final key; ARGV[1] the bytes appended, ARGV[2] the
# retention. Renamed into place (with its expiry) only if it holds exactly what was appended;
# else nothing is done and its length is returned.
COMMIT_OUTPUTS_LUA = """
local held = redis.call('STRLEN', KEYS[1])
if held ~= tonumber(ARGV[1]) or held == 0 then
  return held
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return -1
"""


def vanishing_inputs(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` of the input archive, an ArchiveGone (the key ended while it was read) raised
    as InputsUnavailable: the execution ends ``error``/``inputs_unavailable``, not ``rejected``."""
    try:
        yield from chunks
    except ArchiveGone as exc:
        raise InputsUnavailable(f"inputs: reading the input archive failed: {exc}") from None


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
    Each ``APPEND``'s reply (the string's length) must be the bytes appended so far, and
    ``commit`` renames only a key of that length (COMMIT_OUTPUTS_LUA): else OutputsLost.
    """

    def __init__(self, connection: Redis, keys: Keys, execution_id: str, retention_seconds: int) -> None:
        self.connection = connection
        self.partial = keys.outputs_partial(execution_id)
        self.final = keys.outputs(execution_id)
        self.retention_seconds = int(retention_seconds)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._started = False
        self.appended = 0  # bytes appended to the partial key so far
        self._commit = connection.register_script(COMMIT_OUTPUTS_LUA)

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
            replies = pipe.execute()
        held = int(replies[1 if not self._started else 0])
        self._started = True
        self.appended += len(data)
        if held != self.appended:
            raise self._lost(held)

    def _lost(self, held: int) -> OutputsLost:
        return OutputsLost(
            f"Redis lost the output archive while it was written: {self.partial} holds {held} bytes, "
            f"{self.appended} were appended (Redis restarted without persistence?)"
        )

    def commit(self) -> None:
        self._flush()
        held = int(self._commit(keys=[self.partial, self.final], args=[self.appended, self.retention_seconds]))
        if held != -1:
            raise self._lost(held)

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
        files.open_inputs = lambda: ChunkReader(prefetched(vanishing_inputs(archive_chunks(connection, key, size))))
    if request.outputs:
        files.outputs = RedisArchiveSink(connection, keys, request.execution_id, retention_seconds)
    return files
