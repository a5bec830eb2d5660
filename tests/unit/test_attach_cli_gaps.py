"""The new-user trial's defects of the ``dockrq`` CLI and the Producer (fakeredis, CLI runner):
an ``inputs`` manifest inside a request, ``--output-dir`` alone, cp and --output path forms."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from producer import AsyncProducer, InvalidRequest, Producer

MANIFEST = {"paths": ["/data/in"], "entries": 1, "bytes": 1, "archive_bytes": 10240}


def _req(eid: str, **extra) -> dict:
    return {"execution_id": eid, "engine": {"image": "busybox", "cmd": ["true"]}, **extra}


def test_a_manifest_inside_the_request_is_refused_at_submit_naming_the_field(fake_redis):
    prod = Producer(connection=fake_redis, prefix="p", queue="jobs")
    before = sorted(fake_redis.keys("*"))
    with pytest.raises(InvalidRequest, match=r"^request\.inputs: set by the producer from submit\(inputs="):
        prod.submit(_req("m0", inputs=MANIFEST))
    with pytest.raises(InvalidRequest, match=r"^request\.inputs: .*"):  # with inputs= as well: still not the caller's
        prod.submit(_req("m1", inputs=MANIFEST), inputs={"/data/in": b"x"})
    with pytest.raises(InvalidRequest, match=r"^requests\[1\]: request\.inputs: set by the producer"):
        prod.submit_many([_req("m2"), _req("m3", inputs=MANIFEST)])
    assert sorted(fake_redis.keys("*")) == before
    assert prod.submit(_req("fine"), inputs={"/data/in": b"x"}) == "fine"


def test_async_producer_refuses_a_manifest_inside_the_request():
    server = fakeredis.FakeServer()

    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        async with AsyncProducer(connection=client, prefix="p", queue="jobs") as ap:
            ap._server_version = (7, 2, 0)  # fakeredis has no INFO; AsyncProducer reads it once for rq
            with pytest.raises(InvalidRequest, match=r"^request\.inputs: set by the producer"):
                await ap.submit(_req("a0", inputs=MANIFEST))
            with pytest.raises(InvalidRequest, match=r"^requests\[0\]: request\.inputs"):
                await ap.submit_many([_req("a1", inputs=MANIFEST)])

    asyncio.run(scenario())
    assert fakeredis.FakeRedis(server=server).keys("*") == []


# -- the CLI's command lines (exit 125, one line, nothing written) ------------------------------

import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from producer.cli import cli  # noqa: E402


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_usage_line(result, *named: str) -> None:
    assert result.exit_code == 125, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockrq: "), result.stderr
    assert all(n in lines[0] for n in named), (named, lines[0])


def test_output_dir_without_output_is_a_usage_error(fake_producer):
    one_usage_line(run("submit", "--output-dir", "ci", "busybox", "true"), "--output-dir", "--output")
    assert fake_producer.keys("*") == []


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("id:/a/../b", "'..'"),
        ("id:/work/out/.", "'/.'"),
        ("id:/a\x00b", "NUL"),
        ("id:/" + "x" * 5000, "bytes"),
    ],
)
def test_every_malformed_cp_source_is_a_usage_error(fake_producer, source, named):
    one_usage_line(run("cp", source, "dest"), "ID:CONTAINER_PATH", named)
    as_json = run("--json", "cp", source, "dest")
    assert (as_json.exit_code, json.loads(as_json.stdout)["exit_code"]) == (125, 125)


def test_cp_takes_docker_cp_path_forms():
    from producer.cp_paths import cp_source, given_path

    assert cp_source("work/out") == ("/work/out", False)  # relative to '/', as docker cp
    assert cp_source("/work/out/") == ("/work/out", True)  # a trailing '/': the directory
    assert cp_source("work//./out/") == ("/work/out", True)
    assert cp_source("/") == ("/", True)
    assert cp_source("/work/in/co:lon") == ("/work/in/co:lon", False)  # a collected name may hold ':'
    assert given_path("/o/") == "/o"
    with pytest.raises(ValueError, match="must not contain NUL or ':'"):
        given_path("/a:b")  # a request's paths may not (Docker's -v SRC:DST)
    with pytest.raises(ValueError, match="must be an absolute container path"):
        given_path("o")  # --output: relative could as well mean -w's directory


def test_output_and_input_trailing_slashes_are_normalised(fake_producer, tmp_path):
    (tmp_path / "f").write_text("x")
    result = run("submit", "-d", "--id", "norm", "--output", "/o/", "--output", "/p//q/",
                 "--input", f"{tmp_path / 'f'}:/in/f/", "busybox", "true")
    assert result.exit_code == 0, result.output
    request = Job.fetch("norm", connection=fake_producer, serializer=JSONSerializer).args[0]
    assert request["outputs"] == ["/o", "/p/q"] and request["inputs"]["paths"] == ["/in/f"]


# -- wait: unknown ids among known ones, the real state at --timeout ----------------------------

import os  # noqa: E402

from schemas import ExecutionResult, ExecutionStatus, Keys, Outcome  # noqa: E402


def _ended(client, eid: str, code: int) -> None:
    status = ExecutionStatus.SUCCEEDED if code == 0 else ExecutionStatus.FAILED
    outcome = Outcome.from_result(ExecutionResult(execution_id=eid, status=status, exit_code=code))
    client.rpush(Keys("p").outcome(eid), outcome.model_dump_json())


def test_wait_reports_the_known_ids_and_one_line_per_unknown_one(fake_producer):
    for eid in ("wa", "wb"):
        assert run("submit", "-d", "--id", eid, "busybox").exit_code == 0
    _ended(fake_producer, "wa", 0)
    _ended(fake_producer, "wb", 3)
    result = run("wait", "wa", "nosuch", "wb", "ghost")
    assert result.exit_code == 125  # an unknown id is the worst (README: wait's exit codes)
    assert sorted(result.stdout.splitlines()) == ["wa  succeeded", "wb  failed (3)"]
    assert sorted(result.stderr.splitlines()) == ["dockrq: no such execution: ghost", "dockrq: no such execution: nosuch"]
    as_json = run("--json", "wait", "wa", "nosuch")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.exit_code == 125
    assert {"error": "no such execution: nosuch", "exit_code": 125, "execution_id": "nosuch"} in lines
    assert any(line.get("execution_id") == "wa" and line.get("status") == "succeeded" for line in lines)


def test_wait_timeout_names_the_real_state(fake_producer):
    assert run("submit", "-d", "--id", "still-q", "busybox").exit_code == 0
    result = run("--json", "wait", "--timeout", "0.2", "still-q")
    assert result.exit_code == 75
    assert json.loads(result.stdout)["error"] == "execution still-q still queued after 0.2s"


def test_a_local_path_that_is_not_utf8_is_shown_quoted(fake_producer, tmp_path):
    missing = os.fsdecode(bytes(tmp_path) + b"/app\xe9")
    result = run("submit", "--input", f"{missing}:/in", "busybox", "true")
    assert result.exit_code == 125
    shown = str(tmp_path) + "/app\\xe9"
    assert result.stderr == f"dockrq: invalid request: inputs: '{shown}': No such file or directory\n"
    result = run("submit", "--env-file", missing, "busybox", "true")
    assert result.stderr.startswith(f"dockrq: invalid request: engine.env: cannot read --env-file '{shown}': ")
    assert fake_producer.keys("*") == []


def test_a_container_path_with_a_name_over_name_max_is_refused_at_submit(fake_producer, tmp_path):
    """A third trial: accepted, then the daemon's untar failed ('file name too long') in the run."""
    from schemas import check_container_path

    (tmp_path / "f").write_text("x")
    assert check_container_path("/x/" + "n" * 255) == "/x/" + "n" * 255
    got = run("submit", "-d", "--input", f"{tmp_path / 'f'}:/x/{'n' * 300}", "busybox", "true")
    assert got.exit_code == 125 and "more than 255 bytes (Linux's NAME_MAX)" in got.stderr
    assert len(got.stderr.splitlines()) == 1 and ("n" * 100) not in got.stderr
    assert fake_producer.keys("*") == []
