"""The dockrq CLI against fakeredis: requests built from flags, output, exit codes, error lines."""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer.cli import cli, exit_code_for
from schemas.connections import redact_url
from schemas import ExecutionResult, ExecutionStatus, Keys, LogBatch, LogEntry, Outcome

KEYS = Keys("p")


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _job(r, execution_id: str) -> Job:
    return Job.fetch(execution_id, connection=r, serializer=JSONSerializer)


def _outcome(execution_id: str, status: ExecutionStatus, exit_code: int | None = None, **error) -> Outcome:
    if error:
        return Outcome.failure(execution_id, status, error["code"], error["message"])
    return Outcome.from_result(ExecutionResult(execution_id=execution_id, status=status, exit_code=exit_code))


def _end(r, outcome: Outcome) -> None:
    r.rpush(KEYS.outcome(outcome.execution_id), outcome.model_dump_json())


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (_outcome("x", ExecutionStatus.SUCCEEDED, 0), 0),
        (_outcome("x", ExecutionStatus.FAILED, 3), 3),
        (_outcome("x", ExecutionStatus.FAILED, 137), 137),
        (_outcome("x", ExecutionStatus.TIMED_OUT, 137), 124),
        (_outcome("x", ExecutionStatus.CANCELLED, code="cancelled", message="by user"), 130),
        (_outcome("x", ExecutionStatus.REJECTED, code="invalid", message="engine.image"), 125),
        (_outcome("x", ExecutionStatus.ERROR, code="image_pull", message="no such image"), 125),
        (_outcome("x", ExecutionStatus.LOST, code="worker_lost", message="gone"), 125),
        (_outcome("x", ExecutionStatus.FAILED, None), 125),
    ],
)
def test_exit_code_for(outcome, code):
    assert exit_code_for(outcome) == code


# -- submit -d ---------------------------------------------------------------


def test_submit_detached_builds_the_request_from_docker_like_flags(fake_producer, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "host-value")
    result = run(
        "submit", "-d", "--id", "cli-1", "-e", "TOKEN=s3cret", "-e", "FROM_HOST", "-e", "UNSET_VAR",
        "-w", "/work", "--entrypoint", "/bin/sh", "--cpus", "1.5", "--memory", "256m", "--pids", "50",
        "--timeout", "30", "--network", "bridge", "--output-limit", "2m", "--pull", "never", "--retries", "2",
        "busybox:latest", "-c", "echo hi --memory 1",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "cli-1\n"
    (request,) = _job(fake_producer, "cli-1").args
    assert request["engine"] == {
        "image": "busybox:latest",
        "entrypoint": ["/bin/sh"],
        "cmd": ["-c", "echo hi --memory 1"],
        "env": {"TOKEN": "s3cret", "FROM_HOST": "host-value"},
        "working_dir": "/work",
    }
    assert request["resources"] == {"cpus": 1.5, "memory": 256 * 1024**2, "pids": 50, "gpus": None}
    assert (request["network"], request["timeout_seconds"], request["pull_policy"], request["retries"]) == (
        "bridge", 30.0, "never", 2,
    )
    assert request["output_limit_bytes"] == 2 * 1024**2


def test_submit_volumes_and_gpus_like_docker_run(fake_producer):
    result = run(
        "submit", "-d", "--id", "cli-v", "-v", "/data:/in", "-v", "/out:/out:rw", "-v", "/ref:/ref:ro",
        "--gpus", "device=0,2", "busybox",
    )
    assert result.exit_code == 0, result.output
    (request,) = _job(fake_producer, "cli-v").args
    assert request["mounts"] == [
        {"source": "/data", "target": "/in", "read_only": True},
        {"source": "/out", "target": "/out", "read_only": False},
        {"source": "/ref", "target": "/ref", "read_only": True},
    ]
    assert request["resources"]["gpus"] == {"vendor": "nvidia", "count": None, "device_ids": ["0", "2"]}

    for i, (gpus, vendor, expected) in enumerate((("all", "nvidia", -1), ("2", "nvidia", 2), ("all", "amd", -1))):
        assert run("submit", "-d", "--id", f"cli-g{i}", "--gpus", gpus, "--gpu-vendor", vendor, "busybox").exit_code == 0
        (request,) = _job(fake_producer, f"cli-g{i}").args
        assert (request["resources"]["gpus"]["vendor"], request["resources"]["gpus"]["count"]) == (vendor, expected)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (("-v", "/data"), "mounts.0: "),
        (("-v", "/a:/b:rx"), "mounts.0: "),
        (("-v", "/a:/b", "-v", "rel:/c"), "mounts.1.source: "),
        (("--gpus", "many"), "resources.gpus: "),
        (("--gpus", "0"), "resources.gpus: "),
        (("--gpus", "\u00b2"), "resources.gpus: '\u00b2' is not 'all', a count or 'device=ID,...'"),  # isdigit, not int
        (("--gpus", "\u0663"), "resources.gpus: "),  # an Arabic-Indic 3: int() would take it, docker would not
        # AMD/Intel GPUs are render nodes: a count would be all of /dev/dri, so the flags to use are named
        (("--gpus", "2", "--gpu-vendor", "amd"), "resources.gpus: amd GPUs are chosen by render node index"),
        (("--gpus", "1", "--gpu-vendor", "intel"), "resources.gpus: intel GPUs are chosen by render node index"),
    ],
)
def test_submit_bad_volume_or_gpus_names_the_field(fake_producer, flags, field):
    result = run("submit", "-d", *flags, "busybox")
    assert result.exit_code == 125
    assert result.stderr.startswith(f"dockrq: invalid request: {field}"), result.stderr
    assert fake_producer.keys("*") == []


def test_submit_detached_json_and_queue_from_env(fake_producer):
    result = run("submit", "-d", "--json", "--id", "cli-2", "busybox", env={"DOCKRQ_QUEUE": "envq"})
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"execution_id": "cli-2"}
    assert _job(fake_producer, "cli-2").origin == "envq"


def test_submit_invalid_request_names_the_field(fake_producer):
    result = run("submit", "-d", "--memory", "1k", "busybox")
    assert result.exit_code == 125
    assert result.stdout == ""
    assert result.stderr.startswith("dockrq: invalid request: resources.memory: ")
    assert result.stderr.count("\n") == 1
    assert fake_producer.keys("*") == []


def test_submit_invalid_output_limit(fake_producer):
    result = run("submit", "-d", "--output-limit", "lots", "busybox")
    assert result.exit_code == 125
    assert "output_limit_bytes" in result.stderr


def test_submit_duplicate_id(fake_producer):
    assert run("submit", "-d", "--id", "same", "busybox").exit_code == 0
    result = run("submit", "-d", "--id", "same", "busybox")
    assert result.exit_code == 125
    assert result.stderr == "dockrq: execution id already in use: same\n"


# -- attached submit ---------------------------------------------------------


def _play_worker(r, execution_id: str, batches: list[LogBatch], outcome: Outcome) -> threading.Thread:
    """Once the CLI follows the log, write it and the outcome as a worker would."""

    def run_worker():
        channel = KEYS.logs_channel(execution_id)
        deadline = time.monotonic() + 5
        while r.pubsub_numsub(channel)[0][1] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for batch in batches:
            r.xadd(KEYS.log_stream(execution_id), {"batch": batch.to_json()})
            r.publish(channel, batch.to_json())
        _end(r, outcome)

    thread = threading.Thread(target=run_worker, daemon=True)
    thread.start()
    return thread


def _entry(stream: str, data: str) -> LogEntry:
    return LogEntry(stream=stream, ts=time.time(), data=data)


def test_attached_submit_streams_output_and_exits_with_the_container_code(fake_producer):
    batches = [
        LogBatch(seq=0, entries=[_entry("stdout", "hello\n"), _entry("stderr", "warn\n")]),
        LogBatch(seq=2, entries=[_entry("stdout", "no newline")]),
        LogBatch(seq=3, eof=True),
    ]
    _play_worker(fake_producer, "att-1", batches, _outcome("att-1", ExecutionStatus.FAILED, 3))
    result = run("submit", "--id", "att-1", "busybox")
    assert result.stdout == "hello\nno newline"
    assert result.stderr == "warn\n"
    assert result.exit_code == 3


def test_attached_submit_of_a_rejected_request(fake_producer):
    rejected = _outcome("att-2", ExecutionStatus.REJECTED, code="policy", message="bind mount /etc not allowed")
    _play_worker(fake_producer, "att-2", [], rejected)
    result = run("submit", "--id", "att-2", "busybox")
    assert result.exit_code == 125
    assert result.stdout == ""
    assert result.stderr == "dockrq: execution att-2 rejected: policy: bind mount /etc not allowed\n"


def test_attached_submit_json_prints_the_outcome(fake_producer):
    threading.Timer(0.3, _end, (fake_producer, _outcome("att-3", ExecutionStatus.TIMED_OUT, 137))).start()
    result = run("--json", "submit", "--id", "att-3", "busybox")
    assert result.exit_code == 124
    assert Outcome.model_validate_json(result.stdout).status is ExecutionStatus.TIMED_OUT


# -- wait, logs, cancel, status, ls -------------------------------------------


def test_wait_exit_code_and_summary(fake_producer):
    run("submit", "-d", "--id", "w1", "busybox")
    _end(fake_producer, _outcome("w1", ExecutionStatus.FAILED, 3))
    result = run("wait", "w1")
    assert (result.exit_code, result.stdout) == (3, "failed (exit 3)\n")


def test_wait_timeout_exit_code(fake_producer):
    run("submit", "-d", "--id", "w2", "busybox")
    result = run("wait", "--timeout", "0.2", "w2")
    assert result.exit_code == 75
    assert result.stderr == "dockrq: execution w2 still queued after 0.2s\n"  # its real state


def test_unknown_id_is_one_line_and_non_zero(fake_producer):
    for command, code in (("wait", 125), ("status", 1), ("cancel", 1), ("logs", 1)):
        result = run(command, "ghost")
        assert result.exit_code == code, command
        assert result.stderr == "dockrq: no such execution: ghost\n", command
        assert result.stdout == ""


def test_logs_raw_tail_and_json(fake_producer):
    run("submit", "-d", "--id", "lg", "busybox")
    for batch in (LogBatch(seq=0, entries=[_entry("stdout", "a\n"), _entry("stderr", "b\n"), _entry("stdout", "c\n")]),
                  LogBatch(seq=3, eof=True)):
        fake_producer.xadd(KEYS.log_stream("lg"), {"batch": batch.to_json()})
    result = run("logs", "lg")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "a\nc\n", "b\n")
    assert run("logs", "--tail", "1", "lg").stdout == "c\n"
    lines = run("logs", "--json", "-f", "lg").stdout.splitlines()
    assert [LogEntry.model_validate_json(line).data for line in lines] == ["a\n", "b\n", "c\n"]


def test_cancel_running_and_finished(fake_producer):
    run("submit", "-d", "--id", "cx", "busybox")
    _job(fake_producer, "cx").set_status(JobStatus.STARTED)
    result = run("cancel", "cx")
    assert result.exit_code == 0
    assert "cancel requested" in result.stdout
    _end(fake_producer, _outcome("cx", ExecutionStatus.CANCELLED, code="cancelled", message="stopped"))
    result = run("cancel", "cx")
    assert result.exit_code == 1
    assert result.stderr == "dockrq: execution cx already ended: cancelled\n"


def test_status_and_ls(fake_producer):
    run("submit", "-d", "--id", "s1", "busybox:1")
    run("submit", "-d", "--id", "s2", "alpine:3")
    _end(fake_producer, _outcome("s1", ExecutionStatus.SUCCEEDED, 0))
    result = run("status", "s1")
    assert result.exit_code == 0
    assert "succeeded" in result.stdout and "busybox:1" in result.stdout
    assert json.loads(run("status", "--json", "s2").stdout)["state"] == "queued"
    listed = json.loads(run("ls", "--json").stdout)
    assert [(v["execution_id"], v["state"]) for v in listed] == [("s2", "queued"), ("s1", "succeeded")]
    table = run("ls", "--limit", "1").stdout
    assert "s2" in table and "alpine:3" in table and "s1" not in table


def test_ls_says_how_an_execution_ended(fake_producer):
    ends = {
        "ok": _outcome("ok", ExecutionStatus.SUCCEEDED, 0),
        "exit3": _outcome("exit3", ExecutionStatus.FAILED, 3),
        "oom": Outcome.from_result(
            ExecutionResult(execution_id="oom", status=ExecutionStatus.FAILED, exit_code=137, oom_killed=True)
        ),
        "pull": _outcome("pull", ExecutionStatus.ERROR, code="image_pull", message="no such image"),
        "stop": _outcome("stop", ExecutionStatus.CANCELLED, code="cancelled", message="by request"),
    }
    for eid, outcome in ends.items():
        run("submit", "-d", "--id", eid, "busybox")
        _end(fake_producer, outcome)
    rows = {line.split()[0]: line for line in run("ls").stdout.splitlines()[1:]}
    assert rows["ok"].split()[1] == "succeeded"
    assert "failed (3)" in rows["exit3"]
    assert "failed (oom)" in rows["oom"]
    assert "error (image_pull)" in rows["pull"]
    assert rows["stop"].split()[1:3] == ["cancelled", "busybox"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6379/1", "redis://:***@h:6379/1"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("redis://user:pw@[::1]:6380", "redis://user:***@[::1]:6380"),
    ],
)
def test_redis_urls_are_shown_without_password(url, shown):
    assert redact_url(url) == shown
