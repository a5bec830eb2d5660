"""A new-user trial's wording defects (fakeredis, click's CliRunner): ``--output-dir`` under a
file refused before submitting; outputs not written at the end name the execution and ``dockrq
cp``; ``cp`` of a path that never existed blames what was left out only where it could have been;
``copy_out`` on an execution that named no outputs says so, as ``outputs`` does."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile

import fakeredis
import pytest
from click.testing import CliRunner

from producer import AsyncProducer, OutputsUnavailable, Producer
from producer.cli import cli
from producer.cli_files import FileOptions, report_outputs
from schemas import ExecutionResult, ExecutionStatus, Keys, Outcome, OutputFile

KEYS = Keys("p")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# -- --output-dir ----------------------------------------------------------------------------------


@pytest.mark.parametrize("under", ["afile/sub", "afile/sub/deeper"])
def test_output_dir_under_a_file_is_refused_before_submitting(fake_producer, tmp_path, under, monkeypatch):
    (tmp_path / "afile").write_text("keep")
    monkeypatch.setattr(Producer, "submit", _no_submit)  # else (no worker here) an attached submit waits for ever
    got = run("submit", "--output", "/o", "--output-dir", str(tmp_path / under), "busybox", "true")
    assert got.exit_code == 125
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockrq: invalid request: --output-dir: cannot create "), got.stderr
    assert lines[0].endswith("afile is not a directory")
    assert fake_producer.keys("*") == []  # nothing submitted
    assert (tmp_path / "afile").read_text() == "keep"


def _no_submit(*_args, **_kwargs):
    raise AssertionError("submitted")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_dir_in_a_directory_not_writable_is_refused_before_submitting(fake_producer, tmp_path, monkeypatch):
    monkeypatch.setattr(Producer, "submit", _no_submit)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    got = run("submit", "--output", "/o", "--output-dir", str(locked / "out"), "busybox", "true")
    assert got.exit_code == 125 and "--output-dir: cannot create" in got.stderr and "is not writable" in got.stderr
    assert fake_producer.keys("*") == []


def test_output_dir_missing_under_a_directory_is_accepted(tmp_path):
    options = {"follow_link": False, "inputs": (), "output_files_limit": None, "max_input": None,
               "outputs": ("/o",), "output_dir": tmp_path / "new" / "deeper"}
    assert FileOptions.take(options, detach=False).output_dir == tmp_path / "new" / "deeper"


class _FailingProducer:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def outputs(self, *_args, **_kwargs):
        raise self.exc


def _ended(eid: str, **result) -> Outcome:
    ran = ExecutionResult(execution_id=eid, status="succeeded", exit_code=0, container_id="c1", **result)
    return Outcome(execution_id=eid, status=ExecutionStatus.SUCCEEDED, result=ran)


def test_outputs_not_written_at_the_end_name_the_execution_and_dockrq_cp(tmp_path, capsys):
    files = FileOptions(None, ["/o"], None, tmp_path / "d", 1 << 20)
    outcome = _ended("w1", output_files=[OutputFile(path="/o", type="dir")], outputs_archive_bytes=1024)
    assert not report_outputs(_FailingProducer(OSError(28, "No space left on device")), outcome, files, False)
    line = capsys.readouterr().err
    assert line == (f"dockrq: output files of w1 not written to {tmp_path / 'd'}: No space left on device; "
                    "get them with dockrq cp w1:PATH DEST (kept with the execution)\n")
    # not a local failure: dockrq cp would not get them either, so no hint
    assert not report_outputs(_FailingProducer(OutputsUnavailable("execution w1: its output archive is gone")),
                              outcome, files, False)
    assert "dockrq cp" not in capsys.readouterr().err


# -- cp of a path that was never there ---------------------------------------------------------------


def _archive(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if not name.endswith(".txt") else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    return buf.getvalue()


def _store(client, eid: str, *, requested: list[str] | None, named_outputs: bool = True, **result) -> None:
    """An ended execution; ``requested``: its rq job's request outputs (None: job gone)."""
    if requested is not None:
        request = {"execution_id": eid, "engine": {"image": "busybox", "cmd": ["true"]}}
        if requested:
            request["outputs"] = requested
        Producer(connection=client, prefix="p", queue="jobs").submit(request)
    if named_outputs:
        raw = _archive("o", "o/a.txt")
        client.set(KEYS.outputs(eid), raw)
        result = {"output_files": [OutputFile(path="/o", type="dir"), OutputFile(path="/o/a.txt", type="file")],
                  "outputs_archive_bytes": len(raw), "output_files_limit_bytes": 16 << 20, **result}
    client.lpush(KEYS.outcome(eid), _ended(eid, **result).model_dump_json())


SPECIAL = {"outputs_truncated": True, "outputs_truncated_by": ["special"]}


@pytest.mark.parametrize(
    ("requested", "path", "left_out_said"),
    [
        (["/o"], "/nope", False),  # never requested: could not have been left out
        (["/o"], "/o/nope", True),  # under a requested path: it could have
        (["/o", "/p"], "/p", True),  # requested, nothing of it listed
        (None, "/nope", False),  # the request unknown (job gone): not under anything collected
        (None, "/o/nope", True),  # ... under a collected directory
    ],
)
def test_cp_names_what_was_left_out_only_where_the_path_could_have_been(fake_redis, tmp_path, requested, path, left_out_said):
    _store(fake_redis, "c1", requested=requested, **SPECIAL)
    producer = Producer(connection=fake_redis, prefix="p", queue="jobs")
    with pytest.raises(OutputsUnavailable) as raised:
        producer.copy_out("c1", path, tmp_path / "x")
    assert str(raised.value).startswith(f"{path} is not among the output files of c1")
    assert ("left out: devices, fifos" in str(raised.value)) == left_out_said, str(raised.value)
    assert not (tmp_path / "x").exists()


def test_cli_cp_of_a_path_never_there_is_one_plain_line(fake_producer, tmp_path):
    _store(fake_producer, "c2", requested=["/o"], **SPECIAL)
    got = CliRunner().invoke(cli, ["cp", "c2:/o2/nope", str(tmp_path / "x")], catch_exceptions=False)
    assert (got.exit_code, got.stderr) == (1, "dockrq: /o2/nope is not among the output files of c2\n")


def test_copy_out_of_an_execution_that_named_no_outputs_says_so_as_outputs_does(fake_redis, tmp_path):
    _store(fake_redis, "n1", requested=[], named_outputs=False)
    producer = Producer(connection=fake_redis, prefix="p", queue="jobs")
    said = []
    for call in (lambda: producer.outputs("n1", tmp_path / "d"), lambda: producer.copy_out("n1", "/o", tmp_path / "x"),
                 lambda: producer.copy_out("n1", "/", tmp_path / "y"),
                 lambda: producer.copy_out_archive("n1", "/o", io.BytesIO())):
        with pytest.raises(OutputsUnavailable) as raised:
            call()
        said.append(str(raised.value))
    assert said == ["execution n1 has no output files: it named no outputs (--output, the request's outputs)"] * 4

    async def aio() -> str:
        async with AsyncProducer(connection=fakeredis.FakeAsyncRedis(server=fake_redis.connection_pool.connection_kwargs["server"]),
                                 prefix="p", queue="jobs") as ap:
            try:
                await ap.copy_out("n1", "/o", tmp_path / "z")
            except OutputsUnavailable as exc:
                return str(exc)
        return "no error"

    assert asyncio.run(aio()) == said[0]


def test_async_copy_out_names_what_was_left_out_as_the_sync_one(fake_redis, tmp_path):
    _store(fake_redis, "c3", requested=["/o"], **SPECIAL)
    server = fake_redis.connection_pool.connection_kwargs["server"]

    async def aio(path: str) -> str:
        async with AsyncProducer(connection=fakeredis.FakeAsyncRedis(server=server), prefix="p", queue="jobs") as ap:
            try:
                await ap.copy_out("c3", path, tmp_path / "z")
            except OutputsUnavailable as exc:
                return str(exc)
        return "no error"

    assert asyncio.run(aio("/nope")) == "/nope is not among the output files of c3"
    assert "(left out: devices, fifos" in asyncio.run(aio("/o/nope"))


def test_status_says_when_collecting_the_outputs_failed():
    """A third trial: Redis lost the output archive as it was written; the worker kept none and
    said why (outputs_truncated_by ["error"]), but ``dockrq status`` showed no outputs line."""
    from producer.cli import _status_rows
    from producer.status import build_view

    failed = ExecutionResult(execution_id="e1", status="succeeded", exit_code=0, container_id="c1",
                             outputs_truncated=True, outputs_truncated_by=["error"], output_files_limit_bytes=10)
    rows = dict(_status_rows(build_view("e1", None, Outcome.from_result(failed))))
    assert rows["outputs"] == "none kept: collecting them failed"
    kept = failed.model_copy(update={"outputs_truncated": False, "outputs_truncated_by": [], "outputs_archive_bytes": 1024,
                                     "output_files": [OutputFile(path="/o", size=0, type="dir")]})
    assert dict(_status_rows(build_view("e1", None, Outcome.from_result(kept))))["outputs"] == "1 entries, 0 files, 0 bytes"
    none = failed.model_copy(update={"outputs_truncated": False, "outputs_truncated_by": []})
    assert "outputs" not in dict(_status_rows(build_view("e1", None, Outcome.from_result(none))))


@pytest.mark.parametrize("outputs", [True, False])
def test_an_attached_submit_whose_execution_vanished_says_how_to_get_its_outputs(fake_producer, tmp_path, monkeypatch, outputs):
    """A third trial: Redis restarted mid-run; the worker ended it later and kept its files,
    but the attached submit only said it vanished."""
    from producer.errors import ExecutionVanished

    def vanished(self, execution_id, *args, **kwargs):
        raise ExecutionVanished(execution_id)

    monkeypatch.setattr(Producer, "logs", vanished)
    args = ["--output", "/o", "--output-dir", str(tmp_path / "od")] if outputs else []
    got = run("submit", "--id", "gone1", *args, "busybox", "true")
    lines = got.stderr.splitlines()
    assert got.exit_code == 125 and len(lines) == 1 and lines[0].startswith("dockrq: execution vanished: "), got.stderr
    hint = "; once it has ended get the outputs with dockrq cp gone1:PATH DEST"
    assert lines[0].endswith(hint) if outputs else hint not in lines[0]


def test_ctrl_c_while_an_attached_submit_writes_its_outputs_says_how_to_get_them(fake_producer, tmp_path, monkeypatch):
    """A fourth trial: Ctrl-C during --output-dir's copy left 2 of 7 files, exit 130, no word."""
    ended = Outcome.from_result(ExecutionResult(execution_id="cut1", status="succeeded", exit_code=0))
    monkeypatch.setattr(Producer, "logs", lambda self, *a, **k: iter(()))
    monkeypatch.setattr(Producer, "wait", lambda self, *a, **k: ended)

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Producer, "outputs", interrupted)
    got = run("submit", "--id", "cut1", "--output", "/o", "--output-dir", str(tmp_path / "od"), "busybox", "true")
    assert got.exit_code == 130
    assert got.stderr == ("dockrq: interrupted while writing the output files of cut1 (it ended succeeded): not all "
                          "written; get them with dockrq cp cut1:PATH DEST\n")
