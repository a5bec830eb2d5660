"""Archives that Redis loses half-way (a restart without persistence, a delete), on fakeredis:
the key is deleted between two chunks of a write or a read.

* the producer's input archive (``SETRANGE``, last chunk first, each with an ``INCRBY`` of its
  counter, then a ``STRLEN``): the submit fails with InputsLost, nothing is enqueued and no
  key is left, also when a restart brings back an older copy;
* the worker's output archive (``APPEND`` to ``outputs:partial``, then the checked rename):
  collecting fails (``outputs_truncated_by: ["error"]``), nothing is kept;
* the worker's read of the input archive: ``error``/``inputs_unavailable``, not the request's
  ``rejected``/``invalid_inputs``, which real format errors keep.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import tarfile

import fakeredis
import pytest

from producer import AsyncProducer, InputsLost, Producer
from producer.files import OutputsUnavailable, archive_reader, build_input_archive, write_input_archive
from schemas import ExecutionRequest, Keys
from schemas.files import ArchiveGone, archive_chunks
from worker.executor import InputsRejected
from worker.executor import collect
from worker.executor.archive import InputArchive
from worker.executor.files import ExecutionFiles, InputsUnavailable
from worker.execution.files import OutputsLost, RedisArchiveSink, execution_files

MiB = 1024 * 1024


def _big_inputs() -> dict:
    return {"/in/a": b"a" * (2 * MiB), "/in/b": b"b" * MiB}  # four chunks of archive (the last one small)


def lose_inputs(monkeypatch, server: fakeredis.FakeServer, before: int, restore: bool = False) -> list:
    """Redis loses the input archive being written, once: just before its chunk number
    ``before`` is written (in the order written; 4: after the last one), every key goes (a
    restart without persistence), or with ``restore`` every key goes back to what it was after
    the first chunk (a restart from an older snapshot or AOF). The hook sits on the archive's
    chunk source, which the writer reads only once the previous chunk's replies are checked."""
    events: list = []
    client = fakeredis.FakeRedis(server=server)
    snapshot: dict = {}

    def hooked(method):
        def chunks(self, *args, **kwargs):
            for n, item in enumerate(method(self, *args, **kwargs)):
                if n == 1:
                    snapshot.update({k: client.dump(k) for k in client.keys("*")})
                if n == before:
                    lose()
                yield item
            if before >= n + 1:
                lose()
        return chunks

    def lose():
        events.append(before)
        client.flushall()
        if restore:
            for key, value in snapshot.items():
                client.restore(key, 0, value)

    from producer.files import InputArchive

    monkeypatch.setattr(InputArchive, "chunks_last_first", hooked(InputArchive.chunks_last_first))
    monkeypatch.setattr(InputArchive, "chunks", hooked(InputArchive.chunks))  # what writers before this one read
    return events


def _request(eid: str = "e1", **fields) -> dict:
    return {"execution_id": eid, "engine": {"image": "busybox"}, **fields}


# -- the producer's writes -----------------------------------------------------------------


LOST = (r"^inputs: Redis lost the input archive while it was written \(p:exec:e1:inputs holds \d+ bytes after \d+ of "
        r"\d+ were written(, \d+ counted in p:exec:e1:inputs:written)?; Redis restarted\?\): nothing enqueued$")


@pytest.mark.parametrize("before", [1, 2, 3, 4])  # after the 1st, 2nd, 3rd chunk, or after the last
def test_an_input_archive_lost_between_chunks_is_never_enqueued(monkeypatch, before):
    server = fakeredis.FakeServer()
    lost = lose_inputs(monkeypatch, server, before)
    client = fakeredis.FakeRedis(server=server)
    with Producer(connection=client, queue="q", prefix="p") as producer:
        with pytest.raises(InputsLost, match=LOST):
            producer.submit(_request(), inputs=_big_inputs())
    assert lost == [before]
    # Given back: no archive (the SETRANGE made a new string, without expiry), no counter, no claim, no job.
    assert client.keys("*") == []


@pytest.mark.parametrize("before", [2, 3])
def test_an_input_archive_restored_from_an_older_copy_is_never_enqueued(monkeypatch, before):
    """A restart that brings back the archive as it was after its first chunk (full length,
    the chunks written since then gone): the length alone cannot tell, the counter does."""
    server = fakeredis.FakeServer()
    lost = lose_inputs(monkeypatch, server, before, restore=True)
    client = fakeredis.FakeRedis(server=server)
    with Producer(connection=client, queue="q", prefix="p") as producer:
        with pytest.raises(InputsLost, match=r"holds 3153920 bytes after \d+ of 3153920 were written, \d+ counted in "
                                             r"p:exec:e1:inputs:written"):
            producer.submit(_request(), inputs=_big_inputs())
    assert lost == [before]
    assert client.keys("*") == []


def test_a_write_repeated_after_a_cut_connection_is_harmless_to_the_archive():
    archive = build_input_archive(_big_inputs(), max_input_bytes=10 * MiB)
    client = fakeredis.FakeRedis()
    write_input_archive(client, "k", archive, 60)
    client.setrange("k", MiB, b"".join(archive.chunks())[MiB:2 * MiB])  # the same bytes again
    assert client.get("k") == b"".join(archive.chunks())
    archive.close()


def test_an_intact_input_archive_costs_one_round_trip_a_chunk_and_one_check():
    archive = build_input_archive(_big_inputs(), max_input_bytes=10 * MiB)
    client = fakeredis.FakeRedis()
    trips = []
    pipeline = client.pipeline

    def counted(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **k: trips.append([c[0][:3] for c in pipe.command_stack]) or execute(*a, **k)
        return pipe

    client.pipeline = counted
    write_input_archive(client, "k", archive, 60)
    size = archive.spec.archive_bytes
    assert trips == [
        [("DEL", "k", "k:written"), ("SETRANGE", "k", 3 * MiB), ("INCRBY", "k:written", size - 3 * MiB),
         ("EXPIRE", "k", 60), ("EXPIRE", "k:written", 60)],
        [("SETRANGE", "k", 2 * MiB), ("INCRBY", "k:written", MiB)],
        [("SETRANGE", "k", MiB), ("INCRBY", "k:written", MiB)],
        [("SETRANGE", "k", 0), ("INCRBY", "k:written", MiB)],
        [("STRLEN", "k"), ("DEL", "k:written")],
    ]
    assert client.keys("*") == [b"k"] and client.get("k") == b"".join(archive.chunks()) and 0 < client.ttl("k") <= 60
    archive.close()


def test_the_async_producer_gives_up_a_lost_input_archive_too(monkeypatch):
    server = fakeredis.FakeServer()
    lose_inputs(monkeypatch, server, 2)

    async def run() -> list:
        client = fakeredis.FakeAsyncRedis(server=server)
        async with AsyncProducer(connection=client, queue="q", prefix="p") as producer:
            producer._server_version = (7, 2, 0)  # fakeredis has no INFO; AsyncProducer reads it once for rq
            with pytest.raises(InputsLost, match=LOST):
                await producer.submit(_request(), inputs=_big_inputs())
        return await client.keys("*")

    assert asyncio.run(run()) == []


# -- the worker's output archive -------------------------------------------------------------


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_content(self, size: int):
        for i in range(0, len(self.data), size):
            yield self.data[i:i + size]

    def close(self) -> None:
        pass


class _Docker:
    """Just enough of worker.executor.client.DockerClient: the container exists, has no user,
    and takes a PUT of an archive (the body is read to its end)."""

    timeout = 5

    def __init__(self) -> None:
        self.api = self
        self.put = b""

    def head(self, url: str, params: dict, timeout: float):  # stat of a container path: nothing there
        class Missing:
            status_code, headers = 404, {}

            def close(self) -> None:
                pass

        return Missing()

    def inspect(self, container_id: str) -> dict:
        return {"Id": container_id, "Config": {}}

    def _url(self, template: str, *args: str) -> str:
        return template.format(*args)

    def _put(self, url: str, params: dict, data) -> None:
        for chunk in data:
            self.put += chunk

    def _raise_for_status(self, response) -> None:
        pass


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class RestartingSink(RedisArchiveSink):
    """Redis loses the partial archive once, right after the first chunk reached it."""

    lost = False

    def _flush(self) -> None:
        super()._flush()
        if self._started and not self.lost:
            self.lost = True
            self.connection.delete(self.partial)


def test_an_output_archive_lost_between_chunks_is_never_kept(fake_redis, monkeypatch, caplog):
    served = _tar({"o/a": b"a" * (2 * MiB), "o/b": b"b" * (2 * MiB)})
    monkeypatch.setattr(collect, "archive_stream", lambda client, cid, path: _Response(served))
    keys = Keys("p")
    request = ExecutionRequest.model_validate(_request(outputs=["/o"]))
    sink = RestartingSink(fake_redis, keys, "e1", 60)
    with caplog.at_level(logging.WARNING, logger="worker.executor.files"):
        fields = ExecutionFiles(outputs=sink).collect_outputs(_Docker(), "cid", request)
    assert sink.lost
    assert (fields["outputs_truncated_by"], fields["output_files"], fields["outputs_archive_bytes"]) == (["error"], [], None)
    assert fake_redis.keys("*") == []  # neither the final key nor the partial one the APPENDs made again
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert re.fullmatch(r"execution e1: collecting outputs failed, none kept: Redis lost the output archive while it "
                        r"was written: p:exec:e1:outputs:partial holds \d+ bytes, \d+ were appended \(.*\)", warning)


def test_an_output_archive_lost_before_its_rename_is_not_renamed(fake_redis):
    keys = Keys("p")
    sink = RedisArchiveSink(fake_redis, keys, "e1", 60)
    sink.write(b"x" * (MiB + 1))
    fake_redis.delete(keys.outputs_partial("e1"))
    with pytest.raises(OutputsLost, match="holds 0 bytes, 1048577 were appended"):
        sink.commit()
    assert not fake_redis.exists(keys.outputs("e1"))
    # The check counts what was appended: a partial key of another length is never renamed either.
    other = RedisArchiveSink(fake_redis, keys, "e2", 60)
    other.write(b"y" * (MiB + 5))
    fake_redis.append(keys.outputs_partial("e2"), b"zz")
    with pytest.raises(OutputsLost, match="holds 1048583 bytes, 1048581 were appended"):
        other.commit()
    assert not fake_redis.exists(keys.outputs("e2"))


def test_an_intact_output_archive_is_renamed_with_its_expiry(fake_redis):
    keys = Keys("p")
    sink = RedisArchiveSink(fake_redis, keys, "e1", 60)
    sink.write(b"a" * (3 * MiB))
    sink.write(b"tail")
    sink.commit()
    assert fake_redis.strlen(keys.outputs("e1")) == 3 * MiB + 4 and not fake_redis.exists(keys.outputs_partial("e1"))
    assert 0 < fake_redis.ttl(keys.outputs("e1")) <= 60


# -- reading an archive that vanishes ------------------------------------------------------------


def _vanishing(client, key: str, after: int = 1):
    """``client.getrange``, deleting ``key`` once ``after`` chunks were read."""
    real = client.getrange
    reads = []

    def getrange(k, start, end):
        if len(reads) == after:
            client.delete(key)
        reads.append(start)
        return real(k, start, end)

    return getrange


def test_chunks_of_a_key_that_vanishes_mid_read_are_archive_gone_not_eof(fake_redis):
    fake_redis.set("k", b"x" * 3000)
    fake_redis.getrange = _vanishing(fake_redis, "k")
    chunks = archive_chunks(fake_redis, "k", 3000, chunk=1000)
    assert next(chunks) == b"x" * 1000
    with pytest.raises(ArchiveGone, match=r"the archive at k vanished from Redis while it was read \(it ends at byte 1000 of 3000"):
        next(chunks)
    assert not issubclass(ArchiveGone, EOFError)


def test_a_worker_whose_input_archive_vanishes_mid_read_ends_error_inputs_unavailable(fake_redis):
    archive = build_input_archive(_big_inputs(), max_input_bytes=10 * MiB)
    keys = Keys("p")
    write_input_archive(fake_redis, keys.inputs("e1"), archive, 60)
    request = ExecutionRequest.model_validate(_request(inputs=archive.spec.model_dump()))
    files = execution_files(fake_redis, keys, request, 60)  # the right length when checked at start
    fake_redis.getrange = _vanishing(fake_redis, keys.inputs("e1"))
    with pytest.raises(InputsUnavailable) as caught:
        files.put_inputs(_Docker(), "cid", request)
    assert caught.value.code == "inputs_unavailable" and not isinstance(caught.value, InputsRejected)
    assert str(caught.value) == (
        "inputs: reading the input archive failed: the archive at p:exec:e1:inputs vanished from Redis while it "
        f"was read (it ends at byte {MiB} of {archive.spec.archive_bytes}: deleted, expired, or lost in a Redis restart)"
    )
    archive.close()


def test_a_truncated_archive_that_is_really_short_stays_rejected_invalid_inputs():
    archive = build_input_archive(_big_inputs(), max_input_bytes=10 * MiB)
    raw = b"".join(archive.chunks())[: 2 * MiB]  # the stream itself ends early: the archive's fault
    with pytest.raises(InputsRejected, match="not a readable tar archive"):
        b"".join(InputArchive(archive.spec).stream(io.BytesIO(raw)))
    archive.close()


def test_an_output_archive_that_vanishes_while_the_producer_reads_it_is_unavailable(fake_redis):
    fake_redis.set("k", b"x" * (3 * MiB))
    fake_redis.getrange = _vanishing(fake_redis, "k")
    reader = archive_reader(fake_redis, "k", 3 * MiB)
    with pytest.raises(OutputsUnavailable, match=r"^outputs: the archive at k vanished from Redis while it was read"):
        reader.read()


def test_dockrq_submit_says_in_one_line_that_redis_lost_the_input_archive(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from producer import cli as cli_module

    server = fakeredis.FakeServer()
    lose_inputs(monkeypatch, server, 2)
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr(cli_module, "Producer", lambda url, *, queue, prefix, retention_seconds: Producer(
        connection=client, queue=queue, prefix="p", retention_seconds=retention_seconds))
    (tmp_path / "big").write_bytes(b"x" * (3 * MiB))
    result = CliRunner().invoke(cli_module.cli, ["submit", "-d", "--id", "e1", "--input", f"{tmp_path / 'big'}:/in",
                                                 "busybox", "true"], catch_exceptions=False)
    assert result.exit_code == 125, result.stderr  # as docker run for an error of its own: not "invalid request"
    assert re.fullmatch("dockrq: " + LOST[1:-1] + "\n", result.stderr), result.stderr
    assert client.keys("*") == []
