"""Input archives without Docker: the producer's builder, the worker's checker and re-owner
(worker/executor/archive.py), the Redis side of both (fakeredis), the schema and the policy."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from pydantic import ValidationError

from producer import InputsTooLarge, InvalidRequest
from producer.files import build_input_archive, write_input_archive
from schemas import ChunkReader, ExecutionRequest, InputsSpec, Keys
from worker.executor import InputsRejected
from worker.executor.archive import InputArchive
from schemas.files import archive_chunks
from worker.execution.files import InputsMissing, RedisArchiveSink, execution_files
from worker.config.policy import PolicyViolation, WorkerPolicy


def spec(**fields):
    return InputsSpec(**{"paths": ["/in"], "entries": 100, "bytes": 10**6, "archive_bytes": 10240, **fields})


def checked(raw: bytes, the_spec: InputsSpec, uid=0, gid=0) -> list[tarfile.TarInfo]:
    out = b"".join(InputArchive(the_spec, uid, gid).stream(io.BytesIO(raw)))
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return tar.getmembers()


def test_builder_writes_directories_first_and_announces_exactly(tmp_path):
    (tmp_path / "d" / "b").mkdir(parents=True)
    (tmp_path / "d" / "z.txt").write_text("zz")
    (tmp_path / "d" / "b" / "a.txt").write_text("a")
    os.symlink("/etc/passwd", tmp_path / "d" / "link")  # kept as a link: the host file is never read
    archive = build_input_archive({"/in/tree": tmp_path / "d", "/in/raw": b"123"}, max_input_bytes=100)
    try:
        assert archive.spec == InputsSpec(paths=["/in/raw", "/in/tree"], entries=6, bytes=6, archive_bytes=10240)
        raw = b"".join(archive.chunks())
    finally:
        archive.close()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        got = [(m.name, m.type, m.linkname, m.uid) for m in tar]
    assert got == [
        ("in/raw", tarfile.REGTYPE, "", 0),
        ("in/tree", tarfile.DIRTYPE, "", 0),
        ("in/tree/link", tarfile.SYMTYPE, "/etc/passwd", 0),
        ("in/tree/z.txt", tarfile.REGTYPE, "", 0),
        ("in/tree/b", tarfile.DIRTYPE, "", 0),
        ("in/tree/b/a.txt", tarfile.REGTYPE, "", 0),
    ]
    # What the producer builds, the worker takes, re-owned to the container's user.
    members = checked(raw, archive.spec, uid=1000, gid=100)
    assert [(m.name, m.uid, m.gid) for m in members][:2] == [("in/raw", 1000, 100), ("in/tree", 1000, 100)]


def test_builder_bound_counts_file_contents(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 64)
    assert build_input_archive({"/f": tmp_path / "f"}, max_input_bytes=64).spec.bytes == 64
    with pytest.raises(InputsTooLarge) as info:
        build_input_archive({"/f": tmp_path / "f", "/g": b"1"}, max_input_bytes=64)
    assert (info.value.size, info.value.limit) == (65, 64)
    with pytest.raises(InvalidRequest, match="give a local path or bytes, not int"):
        build_input_archive({"/f": 3}, max_input_bytes=64)
    with pytest.raises(InvalidRequest, match="give at least one container path"):
        build_input_archive({}, max_input_bytes=64)


def _tar(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.linkname = kind, len(data), link
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


D, F, S, L = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    "members, fields, message",
    [
        ([("in", D, b"", ""), ("in/../etc/x", F, b"x", "")], {}, "not a plain relative path"),
        ([("/in", D, b"", ""), ("/in/x", F, b"x", "")], {}, "not a plain relative path"),
        ([("etc/x", F, b"x", "")], {}, "outside the announced paths"),
        ([("inside", F, b"x", "")], {}, "outside the announced paths"),  # 'in' is not a prefix of 'inside'
        ([("in", D, b"", ""), ("in/l", S, b"", "/etc"), ("in/l/x", F, b"x", "")], {}, "not a directory entry earlier"),
        ([("in", D, b"", ""), ("in/a/b", F, b"x", "")], {}, "not a directory entry earlier"),
        ([("in", D, b"", ""), ("in/h", L, b"", "etc/shadow")], {}, "not an earlier file"),
        ([("in", D, b"", ""), ("in/x", F, b"1", ""), ("in/x", F, b"2", "")], {}, "appears twice"),
        ([("in", D, b"", ""), ("in/p", tarfile.FIFOTYPE, b"", "")], {}, "not a regular file, directory"),
        ([("in", D, b"", ""), ("in/a", F, b"", "")], {"entries": 1}, "more entries than the 1 announced"),
        ([("in", D, b"", ""), ("in/a", F, b"123", "")], {"bytes": 2}, "more file bytes than the 2 announced"),
    ],
)
def test_checker_refuses_archives_that_leave_their_targets(members, fields, message):
    with pytest.raises(InputsRejected, match=message):
        checked(_tar(*members), spec(**fields))


def test_checker_refuses_damaged_and_empty_archives():
    raw = _tar(("in", D, b"", ""), ("in/big", F, b"x" * 5000, ""))
    with pytest.raises(InputsRejected, match="not a readable tar archive"):
        checked(raw[:3000], spec())
    with pytest.raises(InputsRejected, match="no entries"):
        checked(b"\0" * 10240, spec())


def test_checker_keeps_links_inside_and_strips_special_bits():
    raw = _tar(("in", D, b"", ""), ("in/f", F, b"data", ""), ("in/h", L, b"", "in/f"), ("in/s", S, b"", "/anywhere"))
    members = checked(raw, spec(), uid=7, gid=8)
    assert [(m.name, m.type, m.linkname, m.uid, m.gid) for m in members] == [
        ("in", D, "", 7, 8), ("in/f", F, "", 7, 8), ("in/h", L, "in/f", 7, 8), ("in/s", S, "/anywhere", 7, 8),
    ]


def test_inputs_spec_and_request_fields_are_validated():
    with pytest.raises(ValidationError, match="is '/a' or inside it"):
        spec(paths=["/a", "/a/b"])
    with pytest.raises(ValidationError, match="archive_bytes: .* is more than"):
        spec(entries=1, bytes=0, archive_bytes=10**6)
    with pytest.raises(ValidationError, match="outputs.0"):
        ExecutionRequest.model_validate({"engine": {"image": "i"}, "outputs": ["/a/../b"]})
    plain = ExecutionRequest.model_validate({"engine": {"image": "i"}})
    assert {"inputs", "outputs", "output_files_limit_bytes"}.isdisjoint(plain.model_dump())  # old workers take it


def test_redis_roundtrip_of_both_archives(fake_redis):
    archive = build_input_archive({"/in/a": b"x" * 3000}, max_input_bytes=10**6)
    keys = Keys("p")
    request = ExecutionRequest.model_validate(
        {"execution_id": "e1", "engine": {"image": "i"}, "inputs": archive.spec.model_dump(), "outputs": ["/o"]}
    )
    with pytest.raises(InputsMissing, match="no input archive at p:exec:e1:inputs"):
        execution_files(fake_redis, keys, request, 60)
    write_input_archive(fake_redis, keys.inputs("e1"), archive, 60)
    files = execution_files(fake_redis, keys, request, 60)
    reader = files.open_inputs()
    assert reader.read() == b"".join(archive.chunks())
    assert b"".join(archive_chunks(fake_redis, keys.inputs("e1"), 10240, chunk=1000)) == b"".join(archive.chunks())
    fake_redis.append(keys.inputs("e1"), b"more")
    with pytest.raises(InputsMissing, match="is 10244 bytes, the request announces 10240"):
        execution_files(fake_redis, keys, request, 60)

    sink = RedisArchiveSink(fake_redis, keys, "e1", 60)
    sink.write(b"a" * 700_000)
    sink.write(b"b" * 700_000)  # past the chunk: appended to the partial key
    assert fake_redis.strlen(keys.outputs_partial("e1")) == 1_400_000 and not fake_redis.exists(keys.outputs("e1"))
    sink.write(b"c")
    sink.commit()
    assert fake_redis.strlen(keys.outputs("e1")) == 1_400_001 and not fake_redis.exists(keys.outputs_partial("e1"))
    assert 0 < fake_redis.ttl(keys.outputs("e1")) <= 60
    aborted = RedisArchiveSink(fake_redis, keys, "e2", 60)
    aborted.write(b"x" * 2_000_000)
    aborted.abort()
    assert not fake_redis.exists(keys.outputs_partial("e2")) and not fake_redis.exists(keys.outputs("e2"))


def test_chunk_reader_reads_across_chunks():
    reader = ChunkReader([b"ab", b"", b"cde", b"f"])
    assert reader.read(3) in (b"ab", b"abc")
    assert reader.read() in (b"cdef", b"def")


def test_policy_bounds_inputs_and_caps_outputs():
    policy = WorkerPolicy(max_input_bytes="1k", max_output_files_bytes="2k")
    request = ExecutionRequest.model_validate(
        {"engine": {"image": "i"}, "inputs": spec(bytes=2048, archive_bytes=12288).model_dump(), "outputs": ["/o"]}
    )
    with pytest.raises(PolicyViolation, match=r"inputs.bytes: 2048 is above this worker's limit 1024 \(DOCKRQ_MAX_INPUT_BYTES\)"):
        policy.check(request)
    allowed = policy.check(request.model_copy(update={"inputs": None}))
    assert allowed.output_files_limit_bytes == 2048  # capped, not refused
    assert WorkerPolicy(max_output_files_bytes="none").check(allowed).output_files_limit_bytes == 2048


def test_prefetched_reads_ahead_passes_errors_and_stops_when_closed():
    import threading

    from worker.execution.files import prefetched

    assert list(prefetched(iter([b"a", b"b", b"c"]))) == [b"a", b"b", b"c"]

    def failing():
        yield b"a"
        raise EOFError("gone")

    got = prefetched(failing())
    assert next(got) == b"a"
    with pytest.raises(EOFError, match="gone"):
        next(got)

    produced = []

    def endless():
        while True:
            produced.append(1)
            yield b"x"

    before = threading.active_count()
    reader = prefetched(endless(), depth=2)
    next(reader)
    reader.close()  # stops its thread
    assert threading.active_count() == before and len(produced) < 10


def test_reading_outputs_that_were_never_collected_says_why():
    from producer.files import OutputsUnavailable, announced
    from schemas import ExecutionResult, ExecutionStatus, Outcome

    def outcome(status: str, **result) -> Outcome:
        ran = ExecutionResult(execution_id="e1", status=status, **result) if result else None
        return Outcome(execution_id="e1", status=ExecutionStatus(status), result=ran)

    def why(status: str, **result) -> str:
        with pytest.raises(OutputsUnavailable) as caught:
            announced(outcome(status, **result))
        return str(caught.value)

    assert why("rejected") == "execution e1 ended rejected without a container: it has no output files"
    assert why("error", exit_code=None) == "execution e1 ended error without a container: it has no output files"
    assert why("succeeded", container_id="c1", exit_code=0) == (
        "execution e1 has no output files: it named no outputs (--output, the request's outputs)")
    assert why("failed", container_id="c1", outputs_truncated=True, output_files_limit_bytes=10) == (
        "execution e1: its output files could not be collected")
    assert announced(outcome("failed", container_id="c1", outputs_archive_bytes=1024, output_files_limit_bytes=10)) == (1024, 0, 0)
    assert announced(outcome("succeeded", outputs_archive_bytes=1024)) == (1024, 0, 0)  # an outcome without container_id
