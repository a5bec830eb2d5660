"""Values a request used to accept and the daemon (or nobody) refused later: a JSON bool as a
number, sizes beyond Docker's int64, image names outside Docker's reference grammar. Each is
refused at submit, naming the field, with nothing written to Redis."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import producer.cli as cli_module
from producer import InvalidRequest, Producer
from producer.cli import cli
from schemas import ExecutionRequest
from schemas.container import INT64_MAX
from schemas.reference import check_image_reference

IMAGE = {"image": "busybox"}


def _request(**fields) -> dict:
    return {"engine": dict(IMAGE), **fields}


# Every numeric field of a request, with a JSON bool where the number goes.
NUMERIC_FIELDS = [
    ("timeout_seconds", _request(timeout_seconds=True)),
    ("output_limit_bytes", _request(output_limit_bytes=True)),
    ("retries", _request(retries=True)),
    ("retry_backoff_seconds", _request(retries=1, retry_backoff_seconds=True)),
    ("retry_backoff_seconds", _request(retries=2, retry_backoff_seconds=[1, True])),
    ("concurrency_limit", _request(concurrency_key="k", concurrency_limit=True)),
    ("stop_timeout", _request(stop_timeout=False)),
    ("output_files_limit_bytes", _request(output_files_limit_bytes=True)),
    ("resources.cpus", _request(resources={"cpus": True})),
    ("resources.memory", _request(resources={"memory": True})),
    ("resources.pids", _request(resources={"pids": True})),
    ("resources.shm_size", _request(resources={"shm_size": True})),
    ("resources.gpus.count", _request(resources={"gpus": {"count": True}})),
    ("tmpfs.0.size", _request(tmpfs=[{"target": "/t", "size": True}])),
    ("ulimits.0.soft", _request(ulimits=[{"name": "nofile", "soft": True}])),
    ("ulimits.0.hard", _request(ulimits=[{"name": "nofile", "soft": 1, "hard": True}])),
    ("inputs.entries", _request(inputs={"paths": ["/in"], "entries": True, "bytes": 0, "archive_bytes": 1024})),
]


@pytest.mark.parametrize(("field", "request_doc"), NUMERIC_FIELDS)
def test_a_json_bool_is_not_a_number_in_any_numeric_field(field, request_doc):
    with pytest.raises(ValidationError) as caught:
        ExecutionRequest.model_validate_json(json.dumps(request_doc))
    assert any(".".join(str(p) for p in e["loc"]).startswith(field) for e in caught.value.errors()), caught.value
    with pytest.raises(ValidationError):
        ExecutionRequest.model_validate(request_doc)


def test_numbers_still_read_as_before():
    req = ExecutionRequest.model_validate_json(json.dumps(_request(
        timeout_seconds=5, retries=2, retry_backoff_seconds=[1, 2], stop_timeout=3, output_limit_bytes=10,
        resources={"cpus": 1, "memory": "256m", "shm_size": 65536, "pids": 10},
    )))
    assert (req.timeout_seconds, req.resources.cpus, req.resources.memory) == (5.0, 1.0, 256 * 1024 * 1024)


def test_producer_refuses_a_bool_timeout_naming_the_field_and_writes_nothing(fake_redis):
    producer = Producer(connection=fake_redis, prefix="p")
    with pytest.raises(InvalidRequest, match=r"^timeout_seconds: "):
        producer.submit(_request(timeout_seconds=True))
    assert fake_redis.keys("*") == []


@pytest.mark.parametrize("field", ["shm_size", "memory"])
def test_sizes_beyond_dockers_int64_are_refused(field):
    assert ExecutionRequest.model_validate(_request(resources={field: INT64_MAX})).resources
    with pytest.raises(ValidationError, match=f"resources.{field}"):
        ExecutionRequest.model_validate(_request(resources={field: INT64_MAX + 1}))
    with pytest.raises(ValidationError, match=f"resources.{field}"):
        ExecutionRequest.model_validate(_request(resources={field: "99999999t"}))
    with pytest.raises(ValidationError, match="tmpfs.0.size"):
        ExecutionRequest.model_validate(_request(tmpfs=[{"target": "/t", "size": "99999999t"}]))


@pytest.mark.parametrize(
    "image",
    ["busybox", "busybox:1.36", "dockrq-test/busybox:latest", "library/busy_box", "a__b/c-d.e", "a--b",
     "localhost/x", "localhost:5000/team/app:v1", "127.0.0.1:5000/x", "[::1]:5000/x:t", "Registry.Example.com/team/x",
     "busybox@sha256:" + "a" * 64, "busybox:1.36@sha256:" + "0" * 64, "busybox:Latest_1.x"],
)
def test_docker_reference_grammar_accepts(image):
    assert check_image_reference(image) == image
    assert ExecutionRequest.model_validate({"engine": {"image": image}}).engine.image == image


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("BusyBox", "repository name must be lowercase"),
        ("dockrq-test/BusyBox:latest", "repository name must be lowercase"),
        ("Dockrq/busybox", "repository name must be lowercase"),
        ("ghcr.io/org/Image", "repository name must be lowercase"),
        ("a___b", "is not a repository name"),
        ("-busybox", "is not a repository name"),
        ("busybox:", "is not a tag"),
        ("busybox:" + "t" * 129, "is not a tag"),
        ("busybox@sha256:abc", "is not a digest"),
        ("host:port/x", "is not a registry host"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_docker_reference_grammar_refuses_in_the_daemons_words(image, says):
    with pytest.raises(ValueError, match=says):
        check_image_reference(image)
    with pytest.raises(ValidationError, match="engine.image"):
        ExecutionRequest.model_validate({"engine": {"image": image}})


@pytest.fixture
def fake_cli(fake_redis, monkeypatch):
    def make(url, *, queue, prefix, retention_seconds):
        return Producer(connection=fake_redis, queue=queue, prefix="p", retention_seconds=retention_seconds)

    monkeypatch.setattr(cli_module, "Producer", make)
    return fake_redis


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--shm-size", "99999999t", "busybox"), "resources.shm_size"),
        (("--memory", "99999999t", "busybox"), "resources.memory"),
        (("--tmpfs", "/t:size=99999999t", "busybox"), "tmpfs"),
        (("dockrq-test/BusyBox:latest",), "engine.image"),
    ],
)
def test_cli_refuses_at_submit_naming_the_field(fake_cli, args, field):
    result = CliRunner().invoke(cli, ["submit", "-d", *args, "true"], catch_exceptions=False)
    assert result.exit_code == 125, result.output
    assert result.stderr.startswith(f"dockrq: invalid request: {field}") and result.stderr.count("\n") == 1, result.stderr
    assert fake_cli.keys("*") == []
