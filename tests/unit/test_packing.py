"""Command packing of dockrq's Redis clients (schemas/packing.py): bulk values go out uncopied."""

from __future__ import annotations

import pytest
from redis.utils import HIREDIS_AVAILABLE

from schemas.connections import client_from_url
from schemas.packing import BULK_CUTOFF, BulkAwarePacker, command_packer

pytestmark = pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="the packer only replaces hiredis's")


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_a_bulk_value_is_sent_as_given_and_the_command_is_valid_resp() -> None:
    value = b"x" * (BULK_CUTOFF + 1)
    packed = BulkAwarePacker().pack("SETRANGE", "k:inputs", 1048576, value)
    assert any(piece is value for piece in packed)  # handed to sendall, not copied into a buffer
    assert b"".join(bytes(p) for p in packed) == _resp(b"SETRANGE", b"k:inputs", b"1048576", value)


def test_a_memoryview_chunk_is_not_copied_either() -> None:
    view = memoryview(b"y" * (BULK_CUTOFF * 2))
    packed = BulkAwarePacker().pack("APPEND", "k", view)
    assert any(piece is view for piece in packed)
    assert b"".join(bytes(p) for p in packed) == _resp(b"APPEND", b"k", bytes(view))


def test_small_commands_pack_as_hiredis_does() -> None:
    import hiredis

    args = ("HSET", "k", "field", "é", "n", "12")
    packed = BulkAwarePacker().pack(*args)
    assert b"".join(packed) == hiredis.pack_command(tuple(a.encode() for a in args))


def test_clients_from_the_factory_use_it() -> None:
    client = client_from_url("redis://127.0.0.1:1/0")  # no connection is made
    assert isinstance(client.connection_pool.connection_kwargs["command_packer"], BulkAwarePacker)
    assert isinstance(command_packer(), BulkAwarePacker)
