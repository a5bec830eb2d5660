"""Worker settings (env first, flags override) and the dockrq-worker CLI's error handling; no Docker."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from worker.service import cli, doctor
from worker.config.settings import SettingsError, WorkerSettings


def test_defaults():
    s = WorkerSettings.load({})
    assert (s.redis_url, s.queues, s.prefix) == ("redis://127.0.0.1:6379/0", ("dockrq",), "dockrq")
    assert s.executor_id and s.allowed_mount_roots == ()


def test_environment_then_overrides():
    env = {
        "DOCKRQ_REDIS_URL": "rediss://u:p@h:6380/2",
        "DOCKRQ_QUEUES": "high, low,,",
        "DOCKRQ_PREFIX": "px",
        "DOCKRQ_RETENTION_SECONDS": "120",
        "DOCKRQ_EXECUTOR_ID": "node-1",
        "DOCKRQ_STOP_GRACE_SECONDS": "2.5",
        "DOCKRQ_ALLOWED_MOUNT_ROOTS": "/data,/scratch",
        "DOCKRQ_LOG_STREAM_MAXLEN": "50",
    }
    s = WorkerSettings.load(env)
    assert s.queues == ("high", "low") and s.allowed_mount_roots == ("/data", "/scratch")
    assert (s.retention_seconds, s.stop_grace_seconds, s.log_stream_maxlen) == (120, 2.5, 50)
    o = WorkerSettings.load(env, queues=("only",), prefix=None, executor_id="node-2", stop_grace_seconds=0)
    assert (o.queues, o.prefix, o.executor_id, o.stop_grace_seconds) == (("only",), "px", "node-2", 0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DOCKRQ_RETENTION_SECONDS": "soon"}, "DOCKRQ_RETENTION_SECONDS"),
        ({"DOCKRQ_QUEUES": " , "}, "DOCKRQ_QUEUES"),
        ({"DOCKRQ_ALLOWED_MOUNT_ROOTS": "relative/path"}, "DOCKRQ_ALLOWED_MOUNT_ROOTS"),
        ({"DOCKRQ_EXECUTOR_ID": "has space"}, "DOCKRQ_EXECUTOR_ID"),
    ],
)
def test_bad_setting_names_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        WorkerSettings.load(env)


def test_cli_bad_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("DOCKRQ_STOP_GRACE_SECONDS", "-1")
    result = CliRunner().invoke(cli.main, ["--burst"])
    assert result.exit_code == 1
    assert "DOCKRQ_STOP_GRACE_SECONDS" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_refuses_to_run_when_redis_is_down(monkeypatch):
    monkeypatch.setattr(doctor, "check_docker", lambda s: doctor.Check("docker", True, "fake"))
    result = CliRunner().invoke(cli.main, ["run", "--redis-url", "redis://127.0.0.1:1/0", "--burst"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: redis: redis://127.0.0.1:1/0: not reachable")


def test_cli_refuses_to_run_without_docker(monkeypatch):
    monkeypatch.setattr(doctor, "check_redis", lambda s: doctor.Check("redis", True, "fake"))
    monkeypatch.setattr(doctor, "check_docker", lambda s: doctor.Check("docker", False, "no daemon at unix:///x"))
    result = CliRunner().invoke(cli.main, ["--burst"])
    assert (result.exit_code, result.output.strip()) == (1, "Error: docker: no daemon at unix:///x")


def test_doctor_reports_each_check_and_fails(monkeypatch):
    monkeypatch.setattr(doctor, "check_docker", lambda s: doctor.Check("docker", False, "daemon does not answer"))
    result = CliRunner().invoke(cli.main, ["doctor", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("FAIL  redis") and lines[1] == "FAIL  docker    daemon does not answer"


def test_redis_target_hides_credentials():
    import redis

    client = redis.Redis.from_url("redis://user:hunter2@example:6390/3")
    assert doctor.redis_target(client) == "redis://example:6390/3"
    assert doctor.redis_target(redis.Redis.from_url("rediss://:pw@h:1/0")) == "rediss://h:1/0"
