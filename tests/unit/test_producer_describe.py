"""The rq job description: readable like ``docker run``, never showing env values."""

from __future__ import annotations

import shlex

import pytest

from producer.describe import describe, format_size
from schemas import ExecutionRequest


def _request(**overrides) -> ExecutionRequest:
    data = {"engine": {"image": "busybox:latest", "cmd": ["sh", "-c", "echo hi"]}}
    data.update(overrides)
    return ExecutionRequest.model_validate(data)


def test_env_values_are_hidden_and_names_kept():
    req = _request(
        engine={"image": "busybox:latest", "cmd": ["true"], "env": {"TOKEN": "s3cr3t-value", "MODE": "prod"}}
    )
    line = describe(req)
    assert "s3cr3t-value" not in line
    assert "prod" not in line
    assert "-e TOKEN=***" in line
    assert "-e MODE=***" in line


def test_reads_like_docker_run_and_is_shell_quoted():
    req = _request(resources={"memory": "256m", "cpus": 0.5, "pids": 64}, network="bridge")
    line = describe(req)
    assert line == (
        "docker run --rm --cpus 0.5 --memory 256m --pids-limit 64 --network bridge busybox:latest sh -c 'echo hi'"
    )
    assert shlex.split(line)[-3:] == ["sh", "-c", "echo hi"]


def test_list_entrypoint_runs_its_tail_before_cmd():
    req = _request(engine={"image": "img", "entrypoint": ["python", "-u"], "cmd": ["app.py"], "working_dir": "/w"})
    assert describe(req) == "docker run --rm -w /w --entrypoint python --network none img -u app.py"


def test_mounts_show_read_only():
    req = _request(mounts=[{"source": "/data", "target": "/in"}, {"source": "/out", "target": "/o", "read_only": False}])
    line = describe(req)
    assert "-v /data:/in:ro" in line
    assert "-v /out:/o " in line


@pytest.mark.parametrize(
    ("size", "text"),
    [(256 * 1024**2, "256m"), (2 * 1024**3, "2g"), (1536 * 1024, "1536k"), (10_000_001, "10000001")],
)
def test_format_size(size, text):
    assert format_size(size) == text
