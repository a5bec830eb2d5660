"""docker run options (issue 10): request fields, `dockrq submit` flags, worker policy, the
container spec and the rq job description. fakeredis, no Docker."""

from __future__ import annotations

import base64
import io
import json
import shlex
from typing import Any

import pytest
from click.testing import CliRunner
from docker.types import Ulimit as DockerUlimit
from pydantic import ValidationError
from rq.job import Job
from rq.serializers import JSONSerializer

from producer import InvalidRequest
from producer.cli import cli
from producer.describe import describe
from producer.run_flags import read_env_files, read_stdin
from schemas import MAX_STDIN_BYTES, ExecutionRequest, compact_payload
from worker.executor.spec import LABEL_EXECUTION, LABEL_EXECUTOR, ExecutorPolicy, build_container_spec
from worker.config.policy import PolicyViolation, WorkerPolicy
from worker.config.settings import SettingsError, WorkerSettings


def make(**fields: Any) -> ExecutionRequest:
    engine = {"image": "busybox:1.36", "cmd": ["true"], **fields.pop("engine", {})}
    return ExecutionRequest.model_validate({"execution_id": "e1", "engine": engine, **fields})


EVERY_OPTION: dict[str, Any] = {
    "engine": {"user": "1000:1000", "env": {"TOKEN": "s3cret"}},
    "resources": {"shm_size": "256m"},
    "read_only": True,
    "tmpfs": [{"target": "/scratch", "size": "64m"}, {"target": "/run"}],
    "cap_add": ["cap_net_admin"],
    "cap_drop": ["all"],
    "ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}, {"name": "nproc", "soft": 64}],
    "init": True,
    "stop_signal": "usr1",
    "stop_timeout": 5,
    "labels": {"team": "ml x", "empty": ""},
    "stdin_base64": base64.b64encode(b"piped\n").decode(),
}


# -- schema ------------------------------------------------------------------------


def test_schema_normalizes_docker_spellings():
    r = make(**EVERY_OPTION)
    assert r.engine.user == "1000:1000"
    assert r.resources.shm_size == 256 * 1024**2
    assert [(t.target, t.size) for t in r.tmpfs] == [("/scratch", 64 * 1024**2), ("/run", None)]
    assert (r.cap_add, r.cap_drop) == (["NET_ADMIN"], ["ALL"])
    assert [(u.name, u.soft, u.effective_hard) for u in r.ulimits] == [("nofile", 1024, 2048), ("nproc", 64, 64)]
    assert (r.stop_signal, r.stop_timeout, r.init, r.read_only) == ("SIGUSR1", 5, True, True)
    assert r.stdin_bytes == b"piped\n"
    assert make(stop_signal="15").stop_signal == "15"
    assert make(stop_signal="SIGRTMIN+3").stop_signal == "SIGRTMIN+3"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"engine": {"user": "a b"}}, "engine.user"),
        ({"engine": {"user": "1000:1000:1"}}, "engine.user"),
        ({"resources": {"shm_size": "lots"}}, "resources.shm_size"),
        ({"tmpfs": [{"target": "rel"}]}, "tmpfs.0.target"),
        ({"tmpfs": [{"target": "/a:b"}]}, "tmpfs.0.target"),
        ({"tmpfs": [{"target": "/a", "size": 0}]}, "tmpfs.0.size"),  # the kernel reads size=0 as unlimited
        ({"tmpfs": [{"target": "/a"}, {"target": "/a/"}]}, "tmpfs"),
        ({"cap_add": ["FLY"]}, "cap_add"),
        ({"cap_drop": ["NET_ADMINS"]}, "cap_drop"),
        ({"ulimits": [{"name": "files", "soft": 1}]}, "ulimits.0.name"),
        ({"ulimits": [{"name": "nofile", "soft": 10, "hard": 5}]}, "ulimits.0"),
        ({"ulimits": [{"name": "nofile", "soft": 1}, {"name": "nofile", "soft": 2}]}, "ulimits"),
        ({"stop_signal": "SIGFOO"}, "stop_signal"),
        ({"stop_signal": "99"}, "stop_signal"),
        ({"stop_timeout": -1}, "stop_timeout"),
        ({"labels": {"dockrq.execution": "other"}}, "labels"),
        ({"labels": {"DockRQ.x": "1"}}, "labels"),
        ({"labels": {"k": "a\x00b"}}, "labels"),
        ({"stdin_base64": "not base64!"}, "stdin_base64"),
        ({"stdin_base64": base64.b64encode(b"x" * (MAX_STDIN_BYTES + 1)).decode()}, "stdin_base64"),
    ],
)
def test_schema_refuses_bad_values_naming_the_field(fields, field):
    with pytest.raises(ValidationError) as info:
        make(**fields)
    assert any(".".join(map(str, e["loc"])) == field for e in info.value.errors()), info.value


def test_stored_request_leaves_out_options_not_used():
    """A request using none of the new options is stored exactly as before them (older workers take it)."""
    payload = compact_payload(make().model_dump(mode="json"))
    assert set(payload) == {
        "execution_id", "job_id", "engine", "resources", "mounts", "network", "timeout_seconds",
        "output_limit_bytes", "pull_policy", "retries",
    }
    assert "user" not in payload["engine"] and "shm_size" not in payload["resources"]
    full = compact_payload(make(**EVERY_OPTION).model_dump(mode="json"))
    assert ExecutionRequest.model_validate(full) == make(**EVERY_OPTION)


# -- container spec ------------------------------------------------------------------


def test_container_spec_carries_every_option():
    spec = build_container_spec(make(**EVERY_OPTION), "node-a", ExecutorPolicy())
    assert spec.create["user"] == "1000:1000"
    assert (spec.create["stdin_open"], spec.create["stdin_once"]) == (True, True)
    assert (spec.create["stop_signal"], spec.create["stop_timeout"]) == ("SIGUSR1", 5)
    assert spec.create["labels"]["team"] == "ml x" and spec.create["labels"][LABEL_EXECUTOR] == "node-a"
    assert spec.create["labels"][LABEL_EXECUTION] == "e1"
    host = spec.host_config
    assert host["read_only"] is True and host["init"] is True
    assert host["tmpfs"] == {"/scratch": f"size={64 * 1024**2}", "/run": ""}
    assert host["shm_size"] == 256 * 1024**2
    assert (host["cap_add"], host["cap_drop"]) == (["NET_ADMIN"], ["ALL"])
    assert host["ulimits"] == [DockerUlimit(name="nofile", soft=1024, hard=2048), DockerUlimit(name="nproc", soft=64, hard=64)]
    # what is always true stays true
    assert host["privileged"] is False and host["security_opt"] == ["no-new-privileges"]


def test_container_spec_without_options_leaves_docker_defaults():
    spec = build_container_spec(make(), "node-a", ExecutorPolicy())
    for key in ("read_only", "tmpfs", "shm_size", "cap_add", "cap_drop", "ulimits", "init"):
        assert key not in spec.host_config
    for key in ("user", "stop_signal", "stop_timeout", "stdin_once"):
        assert key not in spec.create
    assert spec.create["stdin_open"] is False


# -- worker policy ---------------------------------------------------------------------


def test_policy_allows_no_added_capability_by_default_and_any_drop():
    policy = WorkerPolicy()
    assert policy.check(make(cap_drop=["ALL"])).cap_drop == ["ALL"]
    with pytest.raises(PolicyViolation) as info:
        policy.check(make(cap_add=["NET_ADMIN", "SYS_PTRACE"]))
    assert str(info.value) == (
        "cap_add: NET_ADMIN, SYS_PTRACE are not allowed on this worker (allowed: none) (DOCKRQ_ALLOWED_CAPS)"
    )


def test_policy_allowed_caps_from_env_normalized_and_all():
    policy = WorkerSettings.load({"DOCKRQ_ALLOWED_CAPS": "cap_net_admin, SYS_TIME"}).policy
    assert policy.allowed_caps == ("NET_ADMIN", "SYS_TIME")
    assert policy.check(make(cap_add=["NET_ADMIN"])).cap_add == ["NET_ADMIN"]
    with pytest.raises(PolicyViolation, match=r"cap_add: ALL is not allowed .*allowed: NET_ADMIN, SYS_TIME"):
        policy.check(make(cap_add=["ALL"]))
    everything = WorkerSettings.load({"DOCKRQ_ALLOWED_CAPS": "ALL"}).policy
    assert everything.check(make(cap_add=["ALL", "SYS_ADMIN"])).cap_add == ["ALL", "SYS_ADMIN"]
    with pytest.raises(SettingsError, match="allowed_caps"):
        WorkerSettings.load({"DOCKRQ_ALLOWED_CAPS": "FLY"})


def test_policy_bounds_stop_timeout():
    policy = WorkerPolicy()
    assert policy.check(make(stop_timeout=60)).stop_timeout == 60
    with pytest.raises(PolicyViolation) as info:
        policy.check(make(stop_timeout=61))
    assert str(info.value) == "stop_timeout: 61 is above this worker's limit 60 (DOCKRQ_MAX_STOP_TIMEOUT_SECONDS)"
    assert WorkerSettings.load({"DOCKRQ_MAX_STOP_TIMEOUT_SECONDS": "none"}).policy.check(make(stop_timeout=3600))
    assert WorkerSettings.load({}, max_stop_timeout_seconds="5").policy.max_stop_timeout_seconds == 5


# -- description ------------------------------------------------------------------------


def test_description_renders_every_option_and_hides_env_values():
    line = describe(make(**EVERY_OPTION))
    assert "s3cret" not in line and "-e TOKEN=***" in line
    words = shlex.split(line)  # paste-able: the shell reads it back as these words
    assert words[:3] == ["docker", "run", "--rm"]
    flags = " ".join(words)
    for part in (
        "-i", "-u 1000:1000", "--read-only", "--tmpfs /scratch:size=64m", "--tmpfs /run", "--shm-size 256m",
        "--cap-add NET_ADMIN", "--cap-drop ALL", "--ulimit nofile=1024:2048", "--ulimit nproc=64:64", "--init",
        "--stop-signal SIGUSR1", "--stop-timeout 5", "-l team=ml x", "-l empty=",
    ):
        assert part in flags, part
    assert words[-2:] == ["busybox:1.36", "true"]


def test_description_of_a_plain_request_is_unchanged():
    assert describe(make()) == "docker run --rm --network none busybox:1.36 true"


# -- dockrq submit flags -------------------------------------------------------------------


def run(*args: str, input: bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def stored(r, execution_id: str) -> dict[str, Any]:
    (request,) = Job.fetch(execution_id, connection=r, serializer=JSONSerializer).args
    return request


def test_submit_takes_docker_run_flags(fake_producer, tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "h")
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\n\nA=from-file\nB=  spaced = kept \nFROM_HOST\nNOT_SET_ANYWHERE\n")
    result = run(
        "submit", "-d", "--rm", "--name", "flags-1", "-u", "1000:1000", "--read-only",
        "--tmpfs", "/scratch:size=64m", "--tmpfs", "/run:rw,noexec", "--shm-size", "256m",
        "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=64",
        "--init", "--stop-signal", "SIGUSR1", "--stop-timeout", "5", "-l", "team=ml", "--label", "flag",
        "--env-file", str(env_file), "-e", "A=from-flag", "-m", "128m", "-i",
        "busybox", "cat",
        input=b"piped\n",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "flags-1\n"
    request = stored(fake_producer, "flags-1")
    assert request["engine"]["user"] == "1000:1000"
    assert request["engine"]["env"] == {"A": "from-flag", "B": "  spaced = kept ", "FROM_HOST": "h"}
    assert request["resources"]["memory"] == 128 * 1024**2 and request["resources"]["shm_size"] == 256 * 1024**2
    assert request["tmpfs"] == [{"target": "/scratch", "size": 64 * 1024**2}, {"target": "/run", "size": None}]
    assert (request["cap_add"], request["cap_drop"]) == (["NET_ADMIN"], ["ALL"])
    assert request["ulimits"] == [{"name": "nofile", "soft": 1024, "hard": 2048}, {"name": "nproc", "soft": 64, "hard": None}]
    assert (request["init"], request["read_only"], request["stop_signal"], request["stop_timeout"]) == (True, True, "SIGUSR1", 5)
    assert request["labels"] == {"team": "ml", "flag": ""}
    assert base64.b64decode(request["stdin_base64"]) == b"piped\n"
    description = Job.fetch("flags-1", connection=fake_producer, serializer=JSONSerializer).description
    assert description.startswith("docker run --rm -e A=*** -e B=*** -e FROM_HOST=*** -i -u 1000:1000 --read-only")


def test_submit_without_i_sends_no_stdin(fake_producer):
    assert run("submit", "-d", "--id", "noin", "busybox", input=b"ignored").exit_code == 0
    assert "stdin_base64" not in stored(fake_producer, "noin")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--cap-add", "FLY"), "cap_add: "),
        (("-l", "dockrq.execution=x"), "labels: "),
        (("--tmpfs", "/t:exec"), "tmpfs.0: option 'exec'"),
        (("--tmpfs", "rel"), "tmpfs.0.target: "),
        (("--ulimit", "nofile"), "ulimits.0: 'nofile' is not NAME=SOFT[:HARD]"),
        (("--ulimit", "nofile=a:b"), "ulimits.0: "),
        (("--ulimit", "nofile=10:5"), "ulimits.0: "),
        (("-u", "x y"), "engine.user: "),
        (("--shm-size", "big"), "resources.shm_size: "),
        (("--stop-signal", "NOPE"), "stop_signal: "),
        (("--env-file", "/nonexistent/env"), "engine.env: cannot read --env-file '/nonexistent/env'"),
    ],
)
def test_submit_bad_flag_values_name_the_field_and_exit_125(fake_producer, flags, message):
    result = run("submit", "-d", *flags, "busybox")
    assert result.exit_code == 125
    assert result.stderr.startswith(f"dockrq: invalid request: {message}"), result.stderr
    assert fake_producer.keys("*") == []


def test_submit_i_above_the_bound_is_refused(fake_producer):
    result = run("submit", "-d", "-i", "busybox", "cat", input=b"x" * (MAX_STDIN_BYTES + 1))
    assert result.exit_code == 125
    assert "stdin_base64: more than 524288 bytes (512k) on stdin for -i" in result.stderr
    assert fake_producer.keys("*") == []
    assert read_stdin(io.BytesIO(b"x" * MAX_STDIN_BYTES)) == base64.b64encode(b"x" * MAX_STDIN_BYTES).decode()


def test_env_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("OK=1\nBAD NAME=2\n")
    with pytest.raises(InvalidRequest, match=r"line 2: 'BAD NAME' is not a variable name"):
        read_env_files([str(bad)])
    latin = tmp_path / "latin.env"
    latin.write_bytes(b"A=caf\xe9\n")
    with pytest.raises(InvalidRequest, match="is not UTF-8 text"):
        read_env_files([str(latin)])


# -- usage errors: 125 like docker run; JSON on stdout with --json ---------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "--bogus", "busybox"),
        ("submit",),  # no image
        ("submit", "--cpus", "many", "busybox"),
        ("--bogus", "ls"),
        ("nosuchcommand",),
        ("logs", "--tail", "-3", "x"),
    ],
)
def test_usage_errors_exit_125(fake_producer, args):
    result = run(*args)
    assert result.exit_code == 125, result.output
    assert result.stderr.startswith("dockrq: ") and result.stderr.count("\n") == 1 and result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [("--json", "submit", "--bogus", "busybox"), ("submit", "--json", "--bogus", "busybox"), ("--json", "nosuchcommand")],
)
def test_usage_errors_with_json_are_json_on_stdout(fake_producer, args):
    result = run(*args)
    assert result.exit_code == 125
    error = json.loads(result.stdout)
    assert error["exit_code"] == 125 and ("bogus" in error["error"] or "nosuchcommand" in error["error"])


def test_json_request_errors_are_json_on_stdout(fake_producer):
    result = run("--json", "submit", "-d", "--cap-add", "FLY", "busybox")
    assert result.exit_code == 125
    error = json.loads(result.stdout)
    assert error["exit_code"] == 125 and error["error"].startswith("invalid request: cap_add: ")
