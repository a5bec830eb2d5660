"""How dockrq's Redis clients pack commands: hiredis for the many small ones, no copy for bulk values.

With hiredis installed, redis-py packs every command with ``hiredis.pack_command``,
which copies each argument into one new buffer: cheap for the small commands of
submits and log batches, but a megabyte-sized value (a chunk of an input or output
archive, ``schemas/files.py``) costs more to pack than to send — measured at about
100 MB/s, so a 16 MiB archive spent ~200 ms in packing alone. redis-py's own
``PythonRespSerializer`` hands values above its buffer cutoff to ``sendall``
untouched. :class:`BulkAwarePacker` (a redis-py ``command_packer``, the connection
option for this) uses the latter for commands carrying such a value and hiredis
for the rest; without hiredis, redis-py's default packer is kept.
"""

from __future__ import annotations

from typing import Any

#: A bytes argument longer than this is sent as it is (redis-py's own ``buffer_cutoff``, 6000).
BULK_CUTOFF = 6000

_BULK_TYPES = (bytes, bytearray, memoryview)


class BulkAwarePacker:
    """A redis-py command packer (``Connection(command_packer=...)``): commands with a
    bytes argument over :data:`BULK_CUTOFF` bytes are packed by redis-py's
    ``PythonRespSerializer`` (the value is not copied), all others by hiredis's.
    ``pack(*args)`` returns the list of buffers ``send_packed_command`` sends.
    Arguments are encoded as redis-py's default ``Encoder`` does (UTF-8, strict)."""

    def __init__(self, cutoff: int = BULK_CUTOFF) -> None:
        from redis._parsers import Encoder
        from redis.connection import HiredisRespSerializer, PythonRespSerializer

        self.cutoff = cutoff
        self._small = HiredisRespSerializer()
        self._bulk = PythonRespSerializer(cutoff, Encoder("utf-8", "strict", False).encode)

    def pack(self, *args: Any) -> list[Any]:
        cutoff = self.cutoff
        for arg in args:
            if isinstance(arg, _BULK_TYPES) and len(arg) > cutoff:
                return self._bulk.pack(*args)
        return self._small.pack(*args)


def command_packer() -> BulkAwarePacker | None:
    """The packer for a new client: a :class:`BulkAwarePacker` when redis-py packs with
    hiredis, else None (redis-py's own packer already leaves large values uncopied)."""
    try:
        from redis.utils import HIREDIS_AVAILABLE

        return BulkAwarePacker() if HIREDIS_AVAILABLE else None
    except ImportError:  # a redis-py without these names: its default packer
        return None
