"""Output files collected from the ended container into Redis, listed in the result and
copied out by the producer, on a real dockrq-worker, Redis and dockerd."""

from __future__ import annotations

import io
import os
import tarfile
import time
import uuid

import pytest

from producer import OutputsUnavailable
from schemas import ExecutionStatus, OutputFile

pytestmark = pytest.mark.integration

MAKE_OUT = (
    "mkdir -p /out/sub && printf '{\"ok\": true}' > /out/r.json && head -c 100000 /dev/zero > /out/sub/data.bin "
    "&& ln -s ../r.json /out/sub/rel && ln /out/r.json /out/hard && echo one > /single.txt"
)


def req(image, name, script, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", script]}, **fields}


def test_outputs_are_collected_listed_and_copied_out(producer, spawn_worker, test_image, tmp_path, redis_client):
    spawn_worker()
    eid = producer.submit(req(test_image, "out", MAKE_OUT, outputs=["/out", "/single.txt", "/missing"]))
    outcome = producer.wait(eid, timeout=60)
    result = outcome.result
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert result.output_files == [
        OutputFile(path="/out", type="dir"),
        OutputFile(path="/out/hard", size=12, type="file"),
        OutputFile(path="/out/sub", type="dir"),
        OutputFile(path="/out/sub/data.bin", size=100000, type="file"),
        OutputFile(path="/out/sub/rel", type="symlink", link="../r.json"),
        OutputFile(path="/out/r.json", size=12, type="file"),  # a hard link: collected as a file of its own
        OutputFile(path="/single.txt", size=4, type="file"),
    ]
    assert (result.outputs_missing, result.outputs_truncated) == (["/missing"], False)

    # The stored archive: the documented key and format, its announced size, expiring with the retention.
    key = f"{spawn_worker.prefix}:exec:{eid}:outputs"
    raw = producer.outputs_archive(eid)
    assert len(raw) == result.outputs_archive_bytes == redis_client.strlen(key)
    assert 0 < redis_client.ttl(key) <= producer.retention_seconds
    assert not redis_client.exists(f"{key}:partial")
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.getnames() == ["out", "out/hard", "out/sub", "out/sub/data.bin", "out/sub/rel", "out/r.json", "single.txt"]
    sink = io.BytesIO()
    assert producer.outputs_archive(eid, sink) == len(raw) and sink.getvalue() == raw

    # Everything, under the container paths.
    report = producer.outputs(eid, tmp_path / "all")
    assert report.skipped == []
    assert (tmp_path / "all/out/r.json").read_text() == '{"ok": true}'
    assert (tmp_path / "all/out/hard").read_text() == '{"ok": true}'
    assert (tmp_path / "all/out/sub/data.bin").read_bytes() == b"\0" * 100000
    assert os.readlink(tmp_path / "all/out/sub/rel") == "../r.json"
    assert (tmp_path / "all/out/sub/rel").read_text() == '{"ok": true}'
    assert (tmp_path / "all/single.txt").read_text() == "one\n"

    # One path, placed as docker cp places it.
    report = producer.copy_out(eid, "/out/sub", tmp_path / "newname")  # not there: becomes it
    assert sorted(os.listdir(tmp_path / "newname")) == ["data.bin"]  # rel -> ../r.json would leave newname
    assert report.skipped == [f"'{tmp_path}/newname/rel': a symlink to '../r.json', outside the destination"]
    (tmp_path / "existing").mkdir()
    producer.copy_out(eid, "/out/sub", tmp_path / "existing")  # a directory: goes inside it
    assert sorted(os.listdir(tmp_path / "existing/sub")) == ["data.bin", "rel"]
    producer.copy_out(eid, "/out/r.json", tmp_path / "result.json")
    assert (tmp_path / "result.json").read_text() == '{"ok": true}'
    producer.copy_out(eid, "/", tmp_path / "root")
    assert sorted(os.listdir(tmp_path / "root")) == ["out", "single.txt"]
    with pytest.raises(OutputsUnavailable, match="/missing did not exist in the container"):
        producer.copy_out(eid, "/missing", tmp_path / "x")
    with pytest.raises(OutputsUnavailable, match="/etc is not among the output files"):
        producer.copy_out(eid, "/etc", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _running(producer, eid):
    deadline = time.monotonic() + 60
    while producer.status(eid).state.value != "running":
        assert time.monotonic() < deadline, "never ran"
        time.sleep(0.05)


def test_outputs_are_collected_whatever_the_status(producer, spawn_worker, test_image, tmp_path):
    spawn_worker()
    write = "mkdir -p /out && echo partial > /out/f && "
    failed = producer.submit(req(test_image, "failed", write + "exit 3", outputs=["/out"]))
    timed_out = producer.submit(req(test_image, "slow", write + "sleep 60", outputs=["/out"], timeout_seconds=1))
    cancelled = producer.submit(req(test_image, "cancel", write + "sleep 60", outputs=["/out"]))
    for eid, status in ((failed, ExecutionStatus.FAILED), (timed_out, ExecutionStatus.TIMED_OUT)):
        outcome = producer.wait(eid, timeout=60)
        assert outcome.status == status
        assert [f.path for f in outcome.result.output_files] == ["/out", "/out/f"]
    _running(producer, cancelled)
    producer.cancel(cancelled)
    outcome = producer.wait(cancelled, timeout=60)
    assert outcome.status == ExecutionStatus.CANCELLED
    assert [f.path for f in outcome.result.output_files] == ["/out", "/out/f"]
    assert producer.outputs_archive(cancelled)  # kept like any other

    # No container, no outputs: an image that cannot be had with pull_policy never.
    never = producer.submit(req("dockrq-test/not-there:none", "nopull", "true", outputs=["/out"], pull_policy="never"))
    outcome = producer.wait(never, timeout=60)
    assert outcome.status == ExecutionStatus.ERROR and outcome.result.outputs_archive_bytes is None
    for read in (lambda: producer.outputs(never, "/nonexistent-dest"), lambda: producer.copy_out(never, "/out", tmp_path)):
        with pytest.raises(OutputsUnavailable, match=f"{never} ended error without a container: it has no output files"):
            read()


def test_files_over_the_limit_are_left_out_whole(producer, spawn_worker, test_image, tmp_path):
    spawn_worker(env={"DOCKRQ_MAX_OUTPUT_FILES_BYTES": "650"})
    script = "mkdir /out && head -c 300 /dev/zero > /out/a && head -c 5000 /dev/zero > /out/b && head -c 300 /dev/zero > /out/c"
    # The worker's cap (650) lowers the request's 1000: b does not fit and is left out whole, c still fits.
    eid = producer.submit(req(test_image, "limit", script, outputs=["/out"], output_files_limit_bytes=1000))
    result = producer.wait(eid, timeout=60).result
    assert [(f.path, f.size) for f in result.output_files] == [("/out", 0), ("/out/a", 300), ("/out/c", 300)]
    assert result.outputs_truncated
    with tarfile.open(fileobj=io.BytesIO(producer.outputs_archive(eid))) as tar:  # whole, readable, no partial b
        assert [(m.name, m.size) for m in tar] == [("out", 0), ("out/a", 300), ("out/c", 300)]
    producer.outputs(eid, tmp_path / "got")
    assert sorted(os.listdir(tmp_path / "got/out")) == ["a", "c"]

    # Below the cap, the request's own limit holds.
    eid = producer.submit(req(test_image, "limit2", script, outputs=["/out"], output_files_limit_bytes=500))
    result = producer.wait(eid, timeout=60).result
    assert [(f.path, f.size) for f in result.output_files] == [("/out", 0), ("/out/a", 300)]
    assert result.outputs_truncated

    # Exactly at the limit: nothing is left out.
    eid = producer.submit(req(test_image, "limit3", script, outputs=["/out/a", "/out/c"], output_files_limit_bytes=600))
    result = producer.wait(eid, timeout=60).result
    assert [f.path for f in result.output_files] == ["/out/a", "/out/c"] and not result.outputs_truncated


def test_output_names_that_are_not_utf8_are_listed_escaped_and_the_run_keeps_its_outcome(producer, spawn_worker, test_image, tmp_path):
    """The container names its files: a name (or symlink target) that is not valid UTF-8 must not
    cost the execution its outcome (it once ended `lost`: the outcome could not be written)."""
    spawn_worker()
    script = 'mkdir /o && printf z > "/o/a$(printf "\\377")" && ln -s "$(printf "\\376")" /o/l && echo done'
    eid = producer.submit(req(test_image, "bytes", script, outputs=["/o"]))
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "done\n")
    listed = {f.path: f for f in outcome.result.output_files}
    assert listed["/o/a\\xff"].size == 1 and listed["/o/l"].link == "\\xfe"
    producer.outputs(eid, tmp_path / "got")  # the archive keeps the raw bytes
    assert sorted(os.listdir(os.fsencode(tmp_path / "got" / "o"))) == [b"a\xff", b"l"]
    assert (tmp_path / "got" / "o" / os.fsdecode(b"a\xff")).read_bytes() == b"z"


def test_copying_from_an_execution_that_ran_no_container_says_so(producer, tmp_path):
    """dockrq cp / Producer.copy_out of a rejected (or cancelled-before-start, lost) execution:
    OutputsUnavailable with a message, never an assertion or a traceback."""
    eid = producer.submit({"engine": {"image": "x", "cmd": ["true"]}, "outputs": ["/o"]})
    producer.cancel(eid)  # nobody serves this queue: it ends cancelled before it starts
    assert producer.wait(eid, timeout=10).result is None
    with pytest.raises(OutputsUnavailable, match="ended cancelled without a container: it has no output files"):
        producer.copy_out(eid, "/o", tmp_path / "x")
