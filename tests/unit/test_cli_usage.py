"""Bad command lines of every ``dockrq`` command: exit 125 with one line naming the argument,
``dockrq`` alone is its help (exit 0), ``wait --json`` names the ids still running, and a
Redis URL whose database is not a number is refused by every component."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from producer import Producer
from producer.cli import cli
from schemas import ExecutionResult, ExecutionStatus, Keys, Outcome
from schemas.connections import async_client_from_url, client_from_url
from schemas.redis_url import check_db, parse_redis_url

KEYS = Keys("p")


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_dockrq_alone_prints_its_help_and_exits_0():
    result = run()
    assert result.exit_code == 0
    assert "Commands:" in result.stdout and "submit" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("status", "bad id!"), "EXECUTION_ID"),
        (("logs", "bad id!"), "EXECUTION_ID"),
        (("cancel", "bad/id"), "EXECUTION_ID"),
        (("wait", "ok-id", "bad:id"), "ID..."),
        (("ls", "--group", "bad group!"), "--group"),
        (("ls", "--group", ""), "--group"),
        (("cp", "no-colon", "/tmp/x"), "ID:CONTAINER_PATH"),
        (("cp", "bad!:/work/out", "/tmp/x"), "ID:CONTAINER_PATH"),
        (("cp", "id:", "/tmp/x"), "ID:CONTAINER_PATH"),
        (("wait", "--timeout", "-1", "some-id"), "--timeout"),
        (("wait", "--timeout", "nan", "some-id"), "--timeout"),
        (("wait", "--timeout", "inf", "a", "b"), "--timeout"),
        (("--replica-ack-timeout", "nan", "ls"), "--replica-ack-timeout"),
        (("ls", "--limit", "0"), "--limit"),
        (("logs", "--tail", "-3", "some-id"), "--tail"),
        (("--retention", "0", "ls"), "--retention"),
        (("status",), "EXECUTION_ID"),
        (("bogus",), "bogus"),
    ],
)
def test_bad_values_of_every_command_exit_125_with_one_line_naming_the_argument(fake_producer, args, named):
    result = run(*args)
    assert result.exit_code == 125, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockrq: ") and named in lines[0], result.stderr
    as_json = run("--json", *args)
    assert as_json.exit_code == 125
    assert json.loads(as_json.stdout)["exit_code"] == 125 and named in json.loads(as_json.stdout)["error"]


def test_a_well_formed_unknown_id_is_still_a_runtime_error(fake_producer):
    result = run("status", "ghost")
    assert (result.exit_code, result.stderr) == (1, "dockrq: no such execution: ghost\n")


def test_wait_several_json_names_the_ids_that_timed_out(fake_producer):
    for eid in ("w-done", "w-slow", "w-slower"):
        assert run("submit", "-d", "--id", eid, "busybox").exit_code == 0
    done = Outcome.from_result(ExecutionResult(execution_id="w-done", status=ExecutionStatus.SUCCEEDED, exit_code=0))
    fake_producer.rpush(KEYS.outcome("w-done"), done.model_dump_json())
    result = run("--json", "wait", "--timeout", "0.3", "w-done", "w-slow", "w-slower")
    assert result.exit_code == 75
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["execution_id"] == "w-done"
    assert lines[-1]["exit_code"] == 75 and lines[-1]["pending"] == ["w-slow", "w-slower"]
    # the --timeout as given (not the slice left of it when the last wait began), each id's state
    assert lines[-1]["error"] == "2 execution(s) not ended after 0.3s: w-slow queued, w-slower queued"
    plain = run("wait", "--timeout", "0.3", "w-done", "w-slow")
    assert plain.stderr == "dockrq: 1 execution(s) not ended after 0.3s: w-slow queued\n"
    single = run("--json", "wait", "--timeout", "0.1", "w-slow")
    assert single.exit_code == 75 and json.loads(single.stdout)["pending"] == ["w-slow"]


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/abc", "redis://h/1/2", "redis://h/-1", "rediss://h/x1", "redis://h/?db=x",
            "unix:///tmp/r.sock?db=abc"],
)
def test_a_redis_url_whose_database_is_not_a_number_is_refused_everywhere(url):
    with pytest.raises(ValueError, match="database must be a number"):
        check_db(url)
    with pytest.raises(ValueError, match="database must be a number"):
        parse_redis_url(url)  # the worker's DOCKRQ_REDIS_URL (worker.config.settings)
    with pytest.raises(ValueError, match="database must be a number"):
        client_from_url(url)  # Producer, dockrq-worker, doctor, dashboard, exporter
    with pytest.raises(ValueError, match="database must be a number"):
        asyncio.run(_async_client(url))  # AsyncProducer
    with pytest.raises(ValueError, match="database must be a number"):
        Producer(url)
    result = CliRunner().invoke(cli, ["--redis-url", url, "status", "some-id"], catch_exceptions=False)
    assert result.exit_code == 125 and "--redis-url" in result.stderr and "database" in result.stderr


async def _async_client(url: str) -> None:
    await async_client_from_url(url).aclose()


@pytest.mark.parametrize("url", ["redis://h:6379/0", "redis://h", "redis://h/", "rediss://u:p@h/15", "redis://h/?db=3",
                                 "unix:///tmp/r.sock?db=2"])
def test_good_redis_urls_still_read(url):
    check_db(url)
    parse_redis_url(url)


def test_worker_settings_refuse_the_url():
    from worker.config.settings import WorkerSettings

    with pytest.raises(ValueError, match="database must be a number"):
        WorkerSettings.load({"DOCKRQ_REDIS_URL": "redis://127.0.0.1:6379/abc"})


def test_the_producer_package_imports_its_names_on_first_use():
    """A worker needs producer.usage only: the package must not import its whole client for it
    (PEP 562); every public name still resolves, to the class its module defines."""
    import subprocess
    import sys

    probe = "import sys, producer.usage; print('producer.client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
    import producer

    for name in producer.__all__:
        assert getattr(producer, name) is not None, name
    assert producer.Producer.__module__ == "producer.client" and "Producer" in dir(producer)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        producer.Nope  # noqa: B018
