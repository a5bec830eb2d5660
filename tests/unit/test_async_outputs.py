"""``AsyncProducer.outputs``, ``outputs_archive``, ``copy_out``, ``copy_out_archive`` on fakeredis
(producer/aio_outputs.py): the sync results, errors and safety; streamed in GETRANGE chunks;
on_skip called on the event loop; a cancelled call stops its thread."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import threading
import tracemalloc
from pathlib import Path

import fakeredis
import pytest
from rq.job import Job

from producer import (
    ArchiveRefused,
    AsyncProducer,
    CopyRefused,
    ExecutionNotFound,
    OutputsUnavailable,
    Producer,
)
from schemas import ExecutionResult, ExecutionStatus, Keys, Outcome, OutputFile

KEYS = Keys("p")


def _member(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _archive(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


GOOD = [
    _member("out", tarfile.DIRTYPE),
    _member("out/r.json", data=b'{"ok": true}'),
    _member("out/sub", tarfile.DIRTYPE),
    _member("out/sub/data.bin", data=b"\0" * 300_000),
    _member("out/sub/rel", tarfile.SYMTYPE, linkname="../r.json"),
    _member("single.txt", data=b"one\n"),
]
GOOD_FILES = [
    OutputFile(path="/out", type="dir"),
    OutputFile(path="/out/r.json", size=12, type="file"),
    OutputFile(path="/out/sub", type="dir"),
    OutputFile(path="/out/sub/data.bin", size=300_000, type="file"),
    OutputFile(path="/out/sub/rel", type="symlink", link="../r.json"),
    OutputFile(path="/single.txt", size=4, type="file"),
]


def _store(client, eid: str, raw: bytes | None, files=GOOD_FILES, announce: int | None = None, **result) -> None:
    """An ended execution whose worker collected ``raw`` (None: named no outputs)."""
    fields = {"container_id": "c1", "exit_code": 0, **result}
    if raw is not None:
        fields.update(output_files=files, outputs_archive_bytes=len(raw) if announce is None else announce,
                      output_files_limit_bytes=16 << 20)
        client.set(KEYS.outputs(eid), raw)
    ran = ExecutionResult(execution_id=eid, status="succeeded", **fields)
    client.lpush(KEYS.outcome(eid), Outcome(execution_id=eid, status=ExecutionStatus.SUCCEEDED, result=ran).model_dump_json())


def _tree(root: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(root).as_posix(): (
            "-> " + os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        )
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def server():
    return fakeredis.FakeServer()


def run_async(server, scenario):
    """``scenario(ap)`` on an AsyncProducer over fakeredis' async client."""

    async def main():
        async with AsyncProducer(connection=fakeredis.FakeAsyncRedis(server=server), prefix="p", queue="jobs") as ap:
            return await scenario(ap)

    return asyncio.run(main())


def test_async_results_are_the_sync_ones(server, tmp_path):
    sync_client = fakeredis.FakeRedis(server=server)
    raw = _archive(*GOOD)
    _store(sync_client, "e1", raw)
    sync = Producer(connection=sync_client, prefix="p", queue="jobs")
    (tmp_path / "s-existing").mkdir()
    (tmp_path / "a-existing").mkdir()

    async def scenario(ap):
        sink, one = io.BytesIO(), io.BytesIO()
        return (
            await ap.outputs_archive("e1"),
            await ap.outputs_archive("e1", sink), sink.getvalue(),
            await ap.outputs("e1", tmp_path / "a-all"),
            await ap.copy_out("e1", "/out/sub", tmp_path / "a-new"),
            await ap.copy_out("e1", "/out/sub", tmp_path / "a-existing"),
            await ap.copy_out("e1", "out/r.json", tmp_path / "a-result.json"),
            await ap.copy_out_archive("e1", "/out/sub", one), one.getvalue(),
        )

    got, length, written, all_report, new_report, existing_report, file_report, entries, one_tar = run_async(server, scenario)
    assert got == raw == written and length == len(raw)
    sync_report = sync.outputs("e1", tmp_path / "s-all")
    assert all_report.skipped == sync_report.skipped == []
    assert [p.relative_to(tmp_path / "a-all") for p in all_report.written] == [
        p.relative_to(tmp_path / "s-all") for p in sync_report.written]
    assert _tree(tmp_path / "a-all") == _tree(tmp_path / "s-all") and _tree(tmp_path / "a-all")["out/sub/rel"] == "-> ../r.json"
    sync_new = sync.copy_out("e1", "/out/sub", tmp_path / "s-new")
    assert _tree(tmp_path / "a-new") == _tree(tmp_path / "s-new") == {"data.bin": b"\0" * 300_000}
    assert new_report.skipped == [f"'{tmp_path}/a-new/rel': a symlink to '../r.json', outside the destination"]
    assert sync_new.skipped == [f"'{tmp_path}/s-new/rel': a symlink to '../r.json', outside the destination"]
    sync.copy_out("e1", "/out/sub", tmp_path / "s-existing")
    assert _tree(tmp_path / "a-existing") == _tree(tmp_path / "s-existing") and existing_report.skipped == []
    assert (tmp_path / "a-result.json").read_bytes() == b'{"ok": true}' and file_report.complete
    sink = io.BytesIO()
    assert entries == sync.copy_out_archive("e1", "/out/sub", sink) == 3 and one_tar == sink.getvalue()
    with tarfile.open(fileobj=io.BytesIO(one_tar)) as tar:
        assert tar.getnames() == ["sub", "sub/data.bin", "sub/rel"]


def test_async_errors_are_the_sync_ones(server, tmp_path):
    sync_client = fakeredis.FakeRedis(server=server)
    raw = _archive(*GOOD)
    _store(sync_client, "none", None)  # named no outputs
    _store(sync_client, "gone", raw)
    sync_client.delete(KEYS.outputs("gone"))  # expired
    _store(sync_client, "short", raw[:-512], announce=len(raw))  # not the size announced
    _store(sync_client, "ok", raw)
    sync_client.hset(Job.key_for("running"), "status", "started")  # known, not ended
    (tmp_path / "afile").write_text("keep")
    sync = Producer(connection=sync_client, prefix="p", queue="jobs")

    calls = [
        ("outputs", ("running", tmp_path / "d")), ("outputs", ("none", tmp_path / "d")),
        ("outputs", ("gone", tmp_path / "d")), ("outputs", ("short", tmp_path / "d")),
        ("outputs", ("unknown", tmp_path / "d")), ("outputs", ("no:id", tmp_path / "d")),
        ("outputs", ("ok", tmp_path / "afile")),
        ("outputs_archive", ("running",)), ("outputs_archive", ("none",)), ("outputs_archive", ("gone",)),
        ("outputs_archive", ("short",)), ("outputs_archive", ("unknown",)),
        ("copy_out", ("running", "/out", tmp_path / "d")), ("copy_out", ("gone", "/out", tmp_path / "d")),
        ("copy_out", ("short", "/out", tmp_path / "d")), ("copy_out", ("ok", "/nothere", tmp_path / "d")),
        ("copy_out", ("ok", "/out", tmp_path / "afile")), ("copy_out", ("ok", "/out/r.json/", tmp_path / "d")),
        ("copy_out", ("ok", "/out/r.json", tmp_path / "missing" / "x")),
        ("copy_out_archive", ("none", "/out", io.BytesIO())), ("copy_out_archive", ("gone", "/out", io.BytesIO())),
        ("copy_out_archive", ("short", "/out", io.BytesIO())), ("copy_out_archive", ("ok", "/nothere", io.BytesIO())),
    ]

    def caught(call):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - compared below
            return type(exc), str(exc)
        return None

    async def scenario(ap):
        return [await _caught_async(getattr(ap, name)(*args)) for name, args in calls]

    got = run_async(server, scenario)
    want = [caught(lambda n=name, a=args: getattr(sync, n)(*a)) for name, args in calls]
    assert got == want
    kinds = [kind for kind, _ in got]
    assert kinds.count(OutputsUnavailable) == 17 and kinds.count(ExecutionNotFound) == 3
    assert kinds.count(CopyRefused) == 3 and kinds.count(ArchiveRefused) == 0
    messages = dict(zip([f"{n}:{a[0]}" for n, a in calls], [m for _, m in got]))
    assert messages["outputs:running"] == "execution running has not ended yet"
    assert "it named no outputs" in messages["outputs:none"]
    assert "is gone (expired?)" in messages["outputs:gone"]
    assert f"holds {len(raw) - 512} bytes, the outcome announces {len(raw)}" in messages["outputs:short"]
    assert not (tmp_path / "d").exists() and (tmp_path / "afile").read_text() == "keep"


async def _caught_async(awaitable):
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 - compared with the sync producer's
        return type(exc), str(exc)
    return None


HOSTILE = [
    _member("../escape", data=b"x"),
    _member("/abs", data=b"x"),
    _member("o", tarfile.DIRTYPE),
    _member("o/pw", tarfile.SYMTYPE, linkname="/etc/passwd"),
    _member("o/up", tarfile.SYMTYPE, linkname="../../x"),
    _member("o/hard", tarfile.LNKTYPE, linkname="etc/shadow"),
    _member("o/dev", tarfile.CHRTYPE),
    _member("o/fine", data=b"fine"),
]


def test_hostile_entries_are_skipped_and_said_on_the_event_loop(server, tmp_path):
    sync_client = fakeredis.FakeRedis(server=server)
    listed = [OutputFile(path=f"/o/e{i}", type="dir") for i in range(len(HOSTILE))]  # as many entries as announced
    _store(sync_client, "bad", _archive(*HOSTILE), files=listed + [OutputFile(path="/o/fine", size=6, type="file")])  # 6 file bytes in all
    _store(sync_client, "more", _archive(*(_member(f"o{i}", tarfile.DIRTYPE) for i in range(5))), files=listed[:3])
    _store(sync_client, "bytes", _archive(*HOSTILE), files=listed)  # file bytes, none announced
    said: list[tuple[str, bool]] = []

    async def scenario(ap):
        loop_thread = threading.current_thread()
        report = await ap.outputs("bad", tmp_path / "d", on_skip=lambda line: said.append(
            (line, threading.current_thread() is loop_thread)))
        with pytest.raises(ArchiveRefused, match="more entries than the 3 announced") as refused:
            await ap.outputs("more", tmp_path / "m")
        with pytest.raises(ArchiveRefused, match="more file bytes than the 0 announced"):
            await ap.outputs("bytes", tmp_path / "b")
        return report, refused.value.report

    report, partial = run_async(server, scenario)
    assert _tree(tmp_path / "d") == {"o": "dir", "o/fine": b"fine"}
    assert [line for line, _ in said] == report.skipped and all(on_loop for _, on_loop in said)
    assert report.skipped == [
        "'../escape': not a plain relative path (absolute, '..' or empty parts)",
        "'/abs': not a plain relative path (absolute, '..' or empty parts)",
        f"'{tmp_path}/d/o/pw': a symlink to '/etc/passwd', outside the destination",
        f"'{tmp_path}/d/o/up': a symlink to '../../x', outside the destination",
        f"'{tmp_path}/d/o/hard': a hard link to 'etc/shadow', not a file extracted here",
        f"'{tmp_path}/d/o/dev': a device or special file",
    ]
    assert partial.written == [tmp_path / "m" / f"o{i}" for i in range(3)] and not os.listdir(tmp_path / "b")


class _Counting(io.RawIOBase):
    """A binary sink that keeps nothing but the count of bytes written."""

    bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


def test_a_16_mib_archive_is_streamed_in_getrange_chunks(server, tmp_path):
    sync_client = fakeredis.FakeRedis(server=server)
    big = os.urandom(16 << 20)
    raw = _archive(_member("big", data=big))
    _store(sync_client, "big", raw, files=[OutputFile(path="/big", size=len(big), type="file")])
    ranges: list[int] = []

    async def scenario(ap):
        getrange = ap._client.getrange

        async def counted(key, start, end):
            ranges.append(end - start + 1)
            return await getrange(key, start, end)

        ap._client.getrange = counted
        tracemalloc.start()
        try:
            report = await ap.outputs("big", tmp_path / "d")
            sink = _Counting()
            entries = await ap.copy_out_archive("big", "/big", sink)
            written = sink.bytes
            return report, entries, written, await ap.outputs_archive("big", sink), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    report, entries, tar_bytes, archive_bytes, peak = run_async(server, scenario)
    assert report.complete and (tmp_path / "d/big").read_bytes() == big and entries == 1 and tar_bytes > len(big)
    assert archive_bytes == len(raw) and max(ranges) == 1 << 20 and sum(ranges) == 3 * len(raw)
    assert peak < 8 << 20  # a few chunks, never the 16 MiB archive


def test_a_cancelled_call_stops_its_thread(server, tmp_path):
    sync_client = fakeredis.FakeRedis(server=server)
    members = [_member("../first", data=b"x")] + [_member(f"f{i}", data=os.urandom(1 << 20)) for i in range(6)]
    files = [OutputFile(path=f"/f{i}", size=1 << 20, type="file") for i in range(7)]
    _store(sync_client, "slow", _archive(*members), files=files)

    async def scenario(ap):
        task = asyncio.current_task()
        outputs = asyncio.ensure_future(ap.outputs("slow", tmp_path / "d", on_skip=lambda line: outputs.cancel()))
        with pytest.raises(asyncio.CancelledError):
            await outputs
        assert task is asyncio.current_task()
        # The thread ends (shutting the executor down waits for it) without reading the rest.
        await asyncio.wait_for(asyncio.get_running_loop().shutdown_default_executor(), 10)

    run_async(server, scenario)
    assert sorted(os.listdir(tmp_path / "d")) == []
