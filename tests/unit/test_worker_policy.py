"""The worker's policy (worker/policy.py): operator limits, safe defaults, and the
rq job guard (worker/rq_job.py) that lets a worker run worker.jobs.execute only.
fakeredis, no Docker."""

from __future__ import annotations

import json
import re
from concurrent.futures import Future
from typing import Any

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import ExecutionRequest, ExecutionResult, ExecutionStatus, GpuRequest, Keys, Outcome, Resources
from worker.service import cli, doctor, runtime as runtime_module
from worker.executor import ExecutionNotFound, MountNotAllowed
from worker.config.images import ImagePattern
from worker.execution.run import ExecutionRun
from worker.config.policy import GiB, MiB, PolicyViolation, WorkerPolicy, image_allowed
from worker.service.worker import DockrqWorker
from worker.service.runtime import WorkerRuntime
from worker.config.settings import SettingsError, WorkerSettings

pytest.importorskip("lupa", reason="fakeredis needs lupa (fakeredis[lua]) to run the outcome script")

KEYS = Keys("t")


def req(**fields: Any) -> ExecutionRequest:
    engine = fields.pop("engine", {"image": "dockrq-test/busybox:latest", "cmd": ["true"]})
    return ExecutionRequest.model_validate({"execution_id": "e1", "engine": engine, **fields})


# -- defaults --------------------------------------------------------------------


def test_safe_defaults_fill_in_what_the_request_left_out():
    policy = WorkerPolicy()
    assert (policy.allow_bridge, policy.allowed_mount_roots, policy.allowed_images) == (False, (), ("*",))
    assert (policy.max_gpus, policy.allowed_pull_policies) == (0, ("if_not_present", "always", "never"))
    checked = policy.check(req())
    assert (checked.resources.memory, checked.resources.pids, checked.timeout_seconds) == (1 * GiB, 512, 86400)
    assert checked.resources.cpus is None and checked.output_limit_bytes == 1 * MiB
    assert checked.resources.gpus is None and checked.pull_policy == "if_not_present"
    assert "gpus max 0" in policy.describe() and "pull if_not_present,always,never" in policy.describe()


def test_values_within_the_limits_are_kept():
    asked = req(resources={"memory": "2g", "pids": 100, "cpus": 1.5}, timeout_seconds=60, output_limit_bytes=4 * MiB)
    assert WorkerPolicy(max_cpus=2).check(asked) == asked


def test_defaults_can_be_switched_off_and_never_exceed_the_limit():
    off = WorkerPolicy(default_memory="none", default_pids="none", max_timeout_seconds="none")
    assert off.check(req()) == req()
    tight = WorkerPolicy(max_memory="512m", max_pids=64)
    assert (tight.default_memory, tight.default_pids) == (512 * MiB, 64)


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fields", "message"),
    [
        (
            {"max_memory": "1g"}, {"resources": {"memory": "2g"}},
            "resources.memory: 2147483648 is above this worker's limit 1073741824 (DOCKRQ_MAX_MEMORY)",
        ),
        ({"max_cpus": 2}, {"resources": {"cpus": 2.5}}, "resources.cpus: 2.5 is above this worker's limit 2 (DOCKRQ_MAX_CPUS)"),
        ({}, {"resources": {"pids": 5000}}, "resources.pids: 5000 is above this worker's limit 4096 (DOCKRQ_MAX_PIDS)"),
        (
            {"max_timeout_seconds": 60}, {"timeout_seconds": 61},
            "timeout_seconds: 61 is above this worker's limit 60 (DOCKRQ_MAX_TIMEOUT_SECONDS)",
        ),
        (
            {}, {"output_limit_bytes": 32 * MiB},
            "output_limit_bytes: 33554432 is above this worker's limit 16777216 (DOCKRQ_MAX_OUTPUT_BYTES)",
        ),
        ({}, {"network": "bridge"}, "network: 'bridge' is not allowed on this worker (DOCKRQ_ALLOW_BRIDGE)"),
        (
            {"allowed_images": "dockrq-test/*"}, {"engine": {"image": "busybox"}},
            "engine.image: 'busybox' is not allowed on this worker (allowed: dockrq-test/*) (DOCKRQ_ALLOWED_IMAGES)",
        ),
        # GPUs: none by default, whatever the vendor or the way they are named
        ({}, {"resources": {"gpus": {"count": 1}}}, "resources.gpus: 1 is above this worker's limit 0 (DOCKRQ_MAX_GPUS)"),
        (
            {}, {"resources": {"gpus": {"vendor": "amd", "device_ids": ["0"]}}},
            "resources.gpus: 1 is above this worker's limit 0 (DOCKRQ_MAX_GPUS)",
        ),
        (
            {"max_gpus": 2}, {"resources": {"gpus": {"device_ids": ["0", "1", "2"]}}},
            "resources.gpus: 3 is above this worker's limit 2 (DOCKRQ_MAX_GPUS)",
        ),
        (
            {"max_gpus": 8}, {"resources": {"gpus": {"count": -1}}},
            "resources.gpus: -1 (all) is above this worker's limit 8 (DOCKRQ_MAX_GPUS)",
        ),
        # AMD/Intel without device_ids get all of /dev/dri: every GPU, whatever the limit
        (
            {"max_gpus": 8}, {"resources": {"gpus": {"vendor": "amd", "count": -1}}},
            "resources.gpus: -1 (all) is above this worker's limit 8 (DOCKRQ_MAX_GPUS)",
        ),
        (
            {"max_gpus": 1}, {"resources": {"gpus": {"vendor": "intel", "device_ids": ["0", "1"]}}},
            "resources.gpus: 2 is above this worker's limit 1 (DOCKRQ_MAX_GPUS)",
        ),
        (
            {"allowed_pull_policies": "never"}, {"pull_policy": "always"},
            "pull_policy: 'always' is not allowed on this worker (allowed: never) (DOCKRQ_ALLOWED_PULL_POLICIES)",
        ),
        (
            {"allowed_pull_policies": ("always", "if_not_present")}, {"pull_policy": "never"},
            "pull_policy: 'never' is not allowed on this worker (allowed: always, if_not_present) (DOCKRQ_ALLOWED_PULL_POLICIES)",
        ),
    ],
)
def test_a_request_over_a_limit_is_refused_naming_field_limit_and_setting(policy, fields, message):
    with pytest.raises(PolicyViolation) as info:
        WorkerPolicy(**policy).check(req(**fields))
    assert str(info.value) == message and info.value.code == "policy_violation"


def test_every_violation_is_named_at_once():
    with pytest.raises(PolicyViolation) as info:
        WorkerPolicy(max_memory="1g", allowed_pull_policies="never").check(req(
            resources={"memory": "2g", "pids": 9999, "gpus": {"count": 1}}, network="bridge", pull_policy="always",
        ))
    fields = [part.split(":")[0] for part in str(info.value).split("; ")]
    assert fields == ["resources.memory", "resources.pids", "resources.gpus", "pull_policy", "network"]


def test_gpus_up_to_the_operators_limit():
    two = req(resources={"gpus": {"count": 2}})
    assert WorkerPolicy(max_gpus=2).check(two).resources.gpus == two.resources.gpus
    by_id = req(resources={"gpus": {"vendor": "intel", "device_ids": ["0", "1"]}})
    assert WorkerPolicy(max_gpus=2).check(by_id).resources.gpus == by_id.resources.gpus
    every = req(resources={"gpus": {"count": -1}})  # all of them: only where the operator set no limit
    assert WorkerPolicy(max_gpus="none").check(every).resources.gpus.count == -1
    every_amd = req(resources={"gpus": {"vendor": "amd", "count": -1}})
    assert WorkerPolicy(max_gpus="none").check(every_amd).resources.gpus == every_amd.resources.gpus
    one_node = req(resources={"gpus": {"vendor": "amd", "device_ids": ["0", "00"]}})  # renderD128, named twice
    assert WorkerPolicy(max_gpus=1).check(one_node).resources.gpus == one_node.resources.gpus


@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_an_amd_or_intel_gpu_count_cannot_pass_for_fewer_than_every_gpu(vendor):
    # The schema refuses {count: 1} for these vendors; one that got past it (model_construct) is
    # still counted as what the container would get -- all of /dev/dri -- not as 1.
    gpus = GpuRequest.model_construct(vendor=vendor, count=1, device_ids=None)
    asked = req().model_copy(update={"resources": Resources.model_construct(gpus=gpus)})
    with pytest.raises(PolicyViolation, match=r"^resources\.gpus: -1 \(all\) is above this worker's limit 1 "):
        WorkerPolicy(max_gpus=1).check(asked)


@pytest.mark.parametrize(
    ("allowed", "asked", "runs_with"),
    [
        (("if_not_present", "always", "never"), "always", "always"),
        (("never",), "never", "never"),
        # the schema's default is every request's unless it asks otherwise: the worker settles it
        (("never",), "if_not_present", "never"),
        (("always",), "if_not_present", "always"),
        (("always", "never"), "if_not_present", "never"),
        (("never", "if_not_present"), "if_not_present", "if_not_present"),
    ],
)
def test_pull_policy_is_one_the_worker_allows(allowed, asked, runs_with):
    assert WorkerPolicy(allowed_pull_policies=allowed).check(req(pull_policy=asked)).pull_policy == runs_with


def test_bridge_when_the_operator_allows_it():
    assert WorkerPolicy(allow_bridge=True).check(req(network="bridge")).network == "bridge"
    assert WorkerPolicy(allow_bridge=True).executor_policy.allow_bridge_network


def test_mounts_only_below_allowed_roots(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "escape").symlink_to("/etc")
    policy = WorkerPolicy(allowed_mount_roots=(str(tmp_path / "data"),))
    ok = req(mounts=[{"source": str(tmp_path / "data"), "target": "/data"}])
    assert policy.check(ok).mounts == ok.mounts
    for source in ("/etc", str(tmp_path / "data" / "escape"), f"{tmp_path}/data/../../etc"):
        with pytest.raises(MountNotAllowed, match=r"^mounts\.0\.source: .* \(DOCKRQ_ALLOWED_MOUNT_ROOTS\)$"):
            policy.check(req(mounts=[{"source": source, "target": "/x"}]))
    with pytest.raises(MountNotAllowed, match="allowed: none"):
        WorkerPolicy().check(ok)


def test_long_paths_make_short_messages():
    with pytest.raises(MountNotAllowed) as info:
        WorkerPolicy().check(req(mounts=[{"source": "/" + "a" * 100_000, "target": "/x"}]))
    assert len(str(info.value)) <= 400


@pytest.mark.parametrize(
    ("image", "patterns", "allowed"),
    [
        ("dockrq-test/busybox", ("dockrq-test/*",), True),
        ("dockrq-test/busybox:latest", ("dockrq-test/*",), True),
        ("busybox", ("dockrq-test/*",), False),
        ("busybox:1.36", ("busybox",), True),  # no tag in the pattern: every tag
        ("busybox@sha256:abcd", ("busybox",), True),
        ("busybox", ("busybox:latest",), True),  # no tag in the image: latest
        ("busybox:1.36", ("busybox:latest",), False),
        ("busybox@sha256:abcd", ("busybox:latest",), False),
        ("busybox@sha256:abcd", ("busybox@sha256:abcd",), True),
        ("busybox:1.36@sha256:abcd", ("busybox:1.36",), False),  # the digest decides what runs, not the tag
        ("busybox:1.36@sha256:abcd", ("busybox",), True),
        ("busybox:1.36@sha256:abcd", ("busybox@sha256:abcd",), True),  # ... and it matches its digest
        ("busybox:1.36@sha256:abcd", ("busybox:1.36@sha256:abcd",), True),
        ("busybox:1.36@sha256:abcd", ("busybox@sha256:ef01",), False),
        ("busybox:1.36@sha256:abcd", ("*/library/busybox@sha256:abcd",), True),
        ("ghcr.io/team/app:v1@sha256:abcd", ("ghcr.io/team/app@sha256:*",), True),
        ("ghcr.io/team/app:v1@sha256:abcd", ("ghcr.io/team/app:v2@sha256:*",), False),
        ("busyboxx", ("busybox",), False),
        ("anything/at:all", ("*",), True),
        ("ghcr.io/any/thing@sha256:abcd", ("*",), True),
        # one image however it is written: registry, library/, latest, the legacy index name
        ("docker.io/library/busybox", ("busybox",), True),
        ("index.docker.io/library/busybox:latest", ("busybox:latest",), True),
        ("library/busybox:1.36", ("busybox:1.36",), True),
        ("docker.io/busybox:1.36", ("docker.io/library/busybox:1.36",), True),
        ("docker.io/dockrq-test/busybox", ("dockrq-test/*",), True),
        ("dockrq-test/busybox", ("docker.io/dockrq-test/*",), True),
        ("busybox", ("docker.io/library/*",), True),
        ("busybox:1.36", ("docker.io/library/busybox",), True),
        ("team/app", ("docker.io/library/*",), False),  # not an official image
        ("team/app", ("docker.io/*",), True),  # all of Docker Hub
        ("ghcr.io/team/app", ("docker.io/*",), False),
        ("busybox-extras", ("busy*",), True),  # a one-component pattern is an official image
        ("busybox.evil.example/x", ("busybox*",), False),  # ... not a host that starts like one
        ("busybox.evil.example/x", ("busybox",), False),
        # a registry with a port: the port is not a tag, and the registry is not Docker Hub
        ("registry.local:5000/team/app:v1", ("registry.local:5000/team/*",), True),
        ("registry.local:5000/team/app", ("registry.local:5000/team/app:latest",), True),
        ("registry.local:5000/team/app:v1", ("registry.local:5000/team/app:v*",), True),
        ("registry.local:5000/team/app:v1", ("registry.local:5000/team/app:latest",), False),
        ("registry.local:5000/other/app", ("registry.local:5000/team/*",), False),
        ("registry.local:5000/team/app", ("registry.local/team/*",), False),
        ("registry.local:5000/team/app", ("team/*",), False),  # team/* is Docker Hub's team
        ("team/app", ("registry.local:5000/team/*",), False),
        ("registry.local:5000/app", ("registry.local:5000/app",), True),  # no library/ outside Docker Hub
        ("localhost:5000/app", ("localhost:5000/*",), True),
        ("localhost/app", ("localhost/*",), True),
        ("localhost/app", ("docker.io/*",), False),
        # a wildcard in the registry stays in the registry; one where a Docker Hub name starts spans registries
        ("mirror.example.com/app", ("*.example.com/*",), True),
        ("evil.example/x.example.com/app", ("*.example.com/*",), False),
        ("ghcr.io/team/app", ("*/team/*",), True),
        ("busybox", ("*:latest",), True),
        # '?' and '[...]' stand for a character of the name: qualified like it, they span no registry
        ("busybox", ("?usybox",), True),
        ("busybox:1.36", ("[bc]usybox:1.*",), True),
        ("cusybox", ("[bc]usybox",), True),
        ("ghcr.io/busybox", ("?usybox",), False),
        ("registry.local:5000/busybox", ("[bc]usybox",), False),
        ("team/app", ("?eam/*",), True),
        ("ghcr.io/team/app", ("?eam/*",), False),
        # what Docker would refuse or read as a host is not taken for Docker Hub
        ("Evil/app", ("docker.io/*",), False),
        ("http://docker.io/busybox", ("*",), False),
    ],
)
def test_image_patterns(image, patterns, allowed):
    assert image_allowed(image, patterns) is allowed


def test_only_a_leading_star_spans_registries():
    assert ImagePattern.parse("*") == ImagePattern(None, "*")
    assert ImagePattern.parse("*/team/*") == ImagePattern(None, "*/team/*")
    assert ImagePattern.parse("?usybox") == ImagePattern("docker.io", "library/?usybox")
    assert ImagePattern.parse("[bc]usybox:1.36") == ImagePattern("docker.io", "library/[bc]usybox:1.36")
    assert ImagePattern.parse("?eam/*") == ImagePattern("docker.io", "?eam/*")
    policy = WorkerSettings.load({"DOCKRQ_ALLOWED_IMAGES": "[bc]usybox"}).policy
    assert policy.check(req(engine={"image": "busybox:1.36"})).engine.image == "busybox:1.36"


def test_an_image_pattern_docker_could_never_match_is_refused_at_start():
    with pytest.raises(SettingsError, match=r"DOCKRQ_ALLOWED_IMAGES.*'https://registry.local/\*'"):
        WorkerSettings.load({"DOCKRQ_ALLOWED_IMAGES": "busybox,https://registry.local/*"})


# -- settings: environment and flags ------------------------------------------------------


def test_policy_from_the_environment():
    env = {
        "DOCKRQ_MAX_MEMORY": "2g", "DOCKRQ_MAX_CPUS": "4", "DOCKRQ_MAX_PIDS": "1000",
        "DOCKRQ_MAX_TIMEOUT_SECONDS": "3600", "DOCKRQ_MAX_OUTPUT_BYTES": "4m",
        "DOCKRQ_ALLOWED_IMAGES": "dockrq-test/*, registry.local/*", "DOCKRQ_ALLOWED_MOUNT_ROOTS": "/data,/scratch",
        "DOCKRQ_ALLOW_BRIDGE": "true", "DOCKRQ_DEFAULT_MEMORY": "256m", "DOCKRQ_DEFAULT_PIDS": "100",
        "DOCKRQ_MAX_GPUS": "2", "DOCKRQ_ALLOWED_PULL_POLICIES": "never, if_not_present",
    }
    p = WorkerSettings.load(env).policy
    assert p == WorkerPolicy(
        max_memory=2 * GiB, max_cpus=4, max_pids=1000, max_timeout_seconds=3600, max_output_bytes=4 * MiB,
        allowed_images=("dockrq-test/*", "registry.local/*"), allowed_mount_roots=("/data", "/scratch"),
        allow_bridge=True, default_memory=256 * MiB, default_pids=100,
        max_gpus=2, allowed_pull_policies=("never", "if_not_present"),
    )
    assert WorkerSettings.load(env).allowed_mount_roots == ("/data", "/scratch")
    lifted = WorkerSettings.load(
        {"DOCKRQ_MAX_MEMORY": "none", "DOCKRQ_MAX_PIDS": "unlimited", "DOCKRQ_MAX_GPUS": "none"}
    ).policy
    assert (lifted.max_memory, lifted.max_pids, lifted.max_gpus) == (None, None, None)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DOCKRQ_MAX_MEMORY": "lots"}, "DOCKRQ_MAX_MEMORY"),
        ({"DOCKRQ_MAX_MEMORY": "1k"}, "DOCKRQ_MAX_MEMORY"),
        ({"DOCKRQ_MAX_CPUS": "-1"}, "DOCKRQ_MAX_CPUS"),
        ({"DOCKRQ_MAX_PIDS": "0"}, "DOCKRQ_MAX_PIDS"),
        ({"DOCKRQ_ALLOW_BRIDGE": "perhaps"}, "DOCKRQ_ALLOW_BRIDGE"),
        ({"DOCKRQ_ALLOWED_IMAGES": " , "}, "DOCKRQ_ALLOWED_IMAGES"),
        ({"DOCKRQ_DEFAULT_PIDS": "many"}, "DOCKRQ_DEFAULT_PIDS"),
        ({"DOCKRQ_MAX_GPUS": "-1"}, "DOCKRQ_MAX_GPUS"),
        ({"DOCKRQ_MAX_GPUS": "some"}, "DOCKRQ_MAX_GPUS"),
        ({"DOCKRQ_ALLOWED_PULL_POLICIES": "never,sometimes"}, r"DOCKRQ_ALLOWED_PULL_POLICIES.*'sometimes'"),
        ({"DOCKRQ_ALLOWED_PULL_POLICIES": " , "}, "DOCKRQ_ALLOWED_PULL_POLICIES"),
    ],
)
def test_bad_policy_setting_names_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        WorkerSettings.load(env)


def test_worker_flags_override_the_environment(monkeypatch):
    monkeypatch.setattr(doctor, "check_redis", lambda s: doctor.Check("redis", True, "fake"))
    monkeypatch.setattr(doctor, "check_docker", lambda s: doctor.Check("docker", True, "fake"))
    installed: list[WorkerRuntime] = []
    monkeypatch.setattr(cli, "install", lambda rt: installed.append(rt) or rt)

    class NoWork:
        def __init__(self, *args, **kwargs):
            pass

        def work(self, **kwargs):
            pass

    monkeypatch.setattr(cli, "DockrqWorker", NoWork)
    monkeypatch.setenv("DOCKRQ_MAX_MEMORY", "2g")
    monkeypatch.setenv("DOCKRQ_ALLOWED_IMAGES", "from-env/*")
    result = CliRunner().invoke(cli.main, [
        "run", "--max-memory", "4g", "--max-cpus", "2", "--max-pids", "64", "--max-timeout", "60",
        "--max-output", "2m", "--allow-image", "a/*", "--allow-image", "b", "--allow-mount-root", "/srv",
        "--allow-bridge", "--default-memory", "128m", "--default-pids", "32",
        "--max-gpus", "1", "--allow-pull", "never", "--allow-pull", "if_not_present",
    ])
    assert result.exit_code == 0, result.output
    assert installed[0].settings.policy == WorkerPolicy(
        max_memory=4 * GiB, max_cpus=2, max_pids=64, max_timeout_seconds=60, max_output_bytes=2 * MiB,
        allowed_images=("a/*", "b"), allowed_mount_roots=("/srv",), allow_bridge=True,
        default_memory=128 * MiB, default_pids=32, max_gpus=1, allowed_pull_policies=("never", "if_not_present"),
    )
    monkeypatch.setenv("DOCKRQ_MAX_REQUEST_BYTES", "2m")
    result = CliRunner().invoke(cli.main, ["run", "--max-request-bytes", "64k", "--outcome-retry", "30"])
    assert result.exit_code == 0, result.output
    assert (installed[-1].settings.max_request_bytes, installed[-1].settings.outcome_retry_seconds) == (64 * 1024, 30)
    bad = CliRunner().invoke(cli.main, ["run", "--max-memory", "huge"])
    assert bad.exit_code == 1 and "DOCKRQ_MAX_MEMORY" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(cli.main, ["run", "--max-gpus", "-2"])
    assert bad.exit_code == 1 and "DOCKRQ_MAX_GPUS" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(cli.main, ["run", "--allow-pull", "sometimes"])
    assert bad.exit_code == 125 and "'sometimes' is not one of" in bad.output  # a usage error, as dockrq's


# -- the job function applies it ------------------------------------------------------------


class RecordingExecutor:
    """Starts nothing; records what would have been started, 'exits 0' at once."""

    def __init__(self) -> None:
        self.started: list[ExecutionRequest] = []

    def start(self, request: ExecutionRequest) -> None:
        self.started.append(request)

    def wait(self, execution_id: str) -> Future:
        future: Future = Future()
        future.set_result(ExecutionResult(execution_id=execution_id, status=ExecutionStatus.SUCCEEDED, exit_code=0))
        return future

    def get_log_stream(self, request):
        raise ExecutionNotFound(request.execution_id)

    def info(self, execution_id):
        raise ExecutionNotFound(execution_id)

    def cancel(self, execution_id, grace_seconds=None):
        raise ExecutionNotFound(execution_id)

    def forget(self, execution_id):
        pass


@pytest.fixture
def runtime_with(fake_redis):
    made: list[WorkerRuntime] = []

    def make(executor, **policy):
        settings = WorkerSettings.load({}, prefix="t", executor_id="node-t", retention_seconds=60, **policy)
        rt = WorkerRuntime(settings, executor=executor, connection=fake_redis)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def _outcome(redis, eid) -> Outcome:
    raw = redis.lrange(KEYS.outcome(eid), 0, -1)
    assert len(raw) == 1, raw
    return Outcome.model_validate_json(raw[0])


def test_job_function_rejects_over_the_limit_without_starting(fake_redis, runtime_with):
    ex = RecordingExecutor()
    payload = {"execution_id": "big", "engine": {"image": "busybox"}, "resources": {"memory": "2g"}}
    assert ExecutionRun(runtime_with(ex, max_memory="1g"), None, payload).run()["status"] == "rejected"
    got = _outcome(fake_redis, "big")
    assert (got.status, got.error.code) == (ExecutionStatus.REJECTED, "policy_violation")
    assert got.error.message == "resources.memory: 2147483648 is above this worker's limit 1073741824 (DOCKRQ_MAX_MEMORY)"
    assert ex.started == []


def test_job_function_rejects_gpus_and_refused_pull_policies_without_starting(fake_redis, runtime_with):
    ex = RecordingExecutor()
    runtime = runtime_with(ex, allowed_pull_policies="never")
    gpu = {"execution_id": "gpu", "engine": {"image": "busybox"}, "resources": {"gpus": {"count": 1}}}
    pull = {"execution_id": "pull", "engine": {"image": "busybox"}, "pull_policy": "always"}
    for payload in (gpu, pull):
        assert ExecutionRun(runtime, None, payload).run()["status"] == "rejected"
    got = {eid: _outcome(fake_redis, eid) for eid in ("gpu", "pull")}
    assert {(o.status, o.error.code) for o in got.values()} == {(ExecutionStatus.REJECTED, "policy_violation")}
    assert got["gpu"].error.message == "resources.gpus: 1 is above this worker's limit 0 (DOCKRQ_MAX_GPUS)"
    assert got["pull"].error.message == (
        "pull_policy: 'always' is not allowed on this worker (allowed: never) (DOCKRQ_ALLOWED_PULL_POLICIES)"
    )
    assert ex.started == []
    # a request with the default pull policy runs, with the one the worker allows
    plain = {"execution_id": "plain", "engine": {"image": "busybox"}}
    assert ExecutionRun(runtime, None, plain).run()["status"] == "succeeded"
    assert [(r.execution_id, r.pull_policy) for r in ex.started] == [("plain", "never")]


def test_job_function_starts_with_the_defaults_applied(fake_redis, runtime_with):
    ex = RecordingExecutor()
    payload = {"execution_id": "small", "engine": {"image": "busybox"}}
    assert ExecutionRun(runtime_with(ex, default_memory="64m"), None, payload).run()["status"] == "succeeded"
    (started,) = ex.started
    assert (started.resources.memory, started.resources.pids, started.timeout_seconds) == (64 * MiB, 512, 86400)


# -- the rq job guard ---------------------------------------------------------------------


@pytest.fixture
def installed_runtime(runtime_with):
    previous = runtime_module._current
    ex = RecordingExecutor()
    runtime_module.install(runtime_with(ex))
    yield ex
    runtime_module._current = previous


def _enqueue(redis, job_id, **raw_fields):
    job = Queue("q", connection=redis, serializer=JSONSerializer).enqueue_call(
        "worker.jobs.execute", args=({"engine": {"image": "busybox"}},), job_id=job_id
    )
    if raw_fields:
        redis.hset(job.key, mapping=raw_fields)
    return job


def test_worker_runs_nothing_but_the_dockrq_job_function(fake_redis, installed_runtime, tmp_path):
    marker = tmp_path / "pwned"
    hostile = {
        "os-system": {"data": json.dumps(["os.system", None, [f"touch {marker}"], {}])},
        "pathlib": {"data": json.dumps(["pathlib.Path.touch", None, [str(marker)], {}])},
        "kwargs": {"data": json.dumps(["worker.jobs.execute", None, [{}], {"x": 1}])},
        "two-args": {"data": json.dumps(["worker.jobs.execute", None, [{}, {}], {}])},
        "instance": {"data": json.dumps(["touch", str(marker), [], {}])},
        "pickle": {"data": b"\x80\x05\x95garbage-pickle\x94."},
        "not-utf8": {"data": b"\xff\xfe\xfd"},
        "not-a-list": {"data": json.dumps({"func": "os.system"})},
        "deep": {"data": "[" * 100_000 + "]" * 100_000},
        "callback": {"success_callback_name": "os.abort", "failure_callback_name": "os.abort"},
    }
    for job_id, fields in hostile.items():
        _enqueue(fake_redis, job_id, **fields)
    _enqueue(fake_redis, "fine")

    DockrqWorker(["q"], connection=fake_redis, name="w-guard").work(burst=True)

    assert not marker.exists()
    for job_id in hostile:
        got = _outcome(fake_redis, job_id)
        assert (got.status, got.error.code) == (ExecutionStatus.REJECTED, "invalid_request"), job_id
        assert got.error.message.startswith("rq job: "), (job_id, got.error.message)
        assert Job.fetch(job_id, connection=fake_redis, serializer=JSONSerializer).get_status() == JobStatus.FAILED
    assert re.search("function 'os.system' is not worker.jobs.execute", _outcome(fake_redis, "os-system").error.message)
    assert [r.execution_id for r in installed_runtime.started] == ["fine"]
    assert _outcome(fake_redis, "fine").status == ExecutionStatus.SUCCEEDED
