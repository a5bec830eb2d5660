"""build_container_spec: every safety rule of the container we ask Docker for.

Pure function over (request, executor id, policy); no daemon needed.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
from docker.utils import parse_bytes

from schemas import ExecutionRequest, GpuRequest
from worker.executor.errors import ExecutorError, GpuUnavailableError, MountNotAllowed, RequestRejected
from worker.executor.spec import (
    LABEL_EXECUTION,
    LABEL_EXECUTOR,
    LABEL_JOB,
    ContainerSpec,
    ExecutorPolicy,
    build_container_spec,
    container_name,
    executor_labels,
    gpus_granted,
    image_reference,
)

# What dockerd accepts as a container name.
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def make(**fields: Any) -> ExecutionRequest:
    data: dict[str, Any] = {"execution_id": "exec-1", "engine": {"image": "busybox:1.36", "cmd": ["echo", "hi"]}}
    data.update(fields)
    return ExecutionRequest.model_validate(data)


def build(request: ExecutionRequest | None = None, executor_id: str = "node-a", **policy: Any) -> ContainerSpec:
    return build_container_spec(request or make(), executor_id, ExecutorPolicy(**policy))


@pytest.fixture
def tmp(tmp_path):
    """tmp_path with its own symlinks (e.g. a /tmp alias) resolved, so expected paths are exact."""
    return tmp_path.resolve()


def mount(source: Any, target: str = "/in", read_only: bool = True) -> dict[str, Any]:
    return {"source": str(source), "target": target, "read_only": read_only}


# -- labels and name -------------------------------------------------------------------


def test_labels_name_executor_and_execution():
    spec = build(make(execution_id="abc123"), executor_id="node-a")
    assert spec.labels[LABEL_EXECUTOR] == "node-a"
    assert spec.labels[LABEL_EXECUTION] == "abc123"
    assert LABEL_JOB not in spec.labels
    assert spec.create["labels"] == spec.labels
    assert (LABEL_EXECUTOR, LABEL_EXECUTION, LABEL_JOB) == ("dockrq.executor", "dockrq.execution", "dockrq.job")


def test_job_label_when_job_id_given():
    spec = build(make(job_id="upstream-77"))
    assert spec.labels[LABEL_JOB] == "upstream-77"
    assert spec.create["labels"][LABEL_JOB] == "upstream-77"


def test_created_label_is_a_recent_timestamp():
    before = time.time()
    spec = build()
    created = float(spec.labels["dockrq.created"])
    assert before - 1 <= created <= time.time() + 1


def test_executor_labels_select_this_executor_only():
    assert executor_labels("node-a") == {LABEL_EXECUTOR: "node-a"}


def test_container_name_is_deterministic_and_distinct_per_execution():
    first = build(make(execution_id="e1")).name
    again = build(make(execution_id="e1")).name
    other = build(make(execution_id="e2")).name
    assert first == again == container_name("node-a", "e1")
    assert first != other
    assert first.startswith("dockrq-node-a-e1-")  # readable: both ids, then a digest
    assert DOCKER_NAME.match(first)


def test_container_names_do_not_collide_where_sanitizing_would():
    assert container_name("a-b", "c") != container_name("a", "b-c")
    assert container_name("node/1", "e") != container_name("node:1", "e")


@pytest.mark.parametrize("executor_id", ["host/worker:1", "my host", "a:b/c d", "ü-node", "node@10.0.0.1:6379"])
def test_container_name_is_sanitized(executor_id):
    name = build(make(execution_id="e1"), executor_id=executor_id).name
    assert DOCKER_NAME.match(name), name
    assert not set("/: @") & set(name)
    assert name == container_name(executor_id, "e1")
    # The labels still carry the real executor id: cleanup selects on it.
    assert build(make(execution_id="e1"), executor_id=executor_id).labels[LABEL_EXECUTOR] == executor_id


# -- security ---------------------------------------------------------------------------


def test_never_privileged_and_no_new_privileges():
    hc = build().host_config
    assert hc["privileged"] is False
    assert "no-new-privileges" in hc["security_opt"]
    for risky in ("cap_add", "pid_mode", "ipc_mode", "userns_mode", "devices", "device_requests"):
        assert risky not in hc, risky
    assert hc["binds"] is None


def test_privileged_even_with_everything_requested(tmp):
    req = make(
        network="bridge",
        mounts=[mount(tmp, read_only=False)],
        resources={"cpus": 4, "memory": "1g", "pids": 100, "gpus": {"count": -1}},
        job_id="j",
    )
    hc = build(req, allowed_mount_roots=(str(tmp),)).host_config
    assert hc["privileged"] is False
    assert "no-new-privileges" in hc["security_opt"]


def test_network_none_by_default():
    assert build().host_config["network_mode"] == "none"


def test_network_bridge_when_asked_and_allowed():
    assert build(make(network="bridge")).host_config["network_mode"] == "bridge"


def test_network_bridge_refused_by_policy():
    with pytest.raises(RequestRejected) as info:
        build(make(network="bridge"), allow_bridge_network=False)
    assert "network" in str(info.value)
    assert info.value.code == "invalid_request"
    # 'none' is still fine under that policy.
    assert build(make(), allow_bridge_network=False).host_config["network_mode"] == "none"


# -- resources --------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "nano"), [(0.5, 500_000_000), (1, 1_000_000_000), (2.5, 2_500_000_000), (0.25, 250_000_000)])
def test_cpus_become_nano_cpus(cpus, nano):
    hc = build(make(resources={"cpus": cpus})).host_config
    assert hc["nano_cpus"] == nano
    assert type(hc["nano_cpus"]) is int


def test_nano_cpus_round_not_truncate():
    assert build(make(resources={"cpus": 2.01})).host_config["nano_cpus"] == 2_010_000_000


@pytest.mark.parametrize("cpus", [1e-10, 0.001])
def test_tiny_cpus_never_become_unlimited_or_below_docker_minimum(cpus):
    try:
        req = make(resources={"cpus": cpus})
    except ValueError:  # refused by the schema: fine
        return
    try:
        hc = build(req).host_config
    except RequestRejected:  # refused by the executor: fine
        return
    assert hc["nano_cpus"] >= 10_000_000


def test_memory_is_limit_and_swap_limit():
    hc = build(make(resources={"memory": "256m"})).host_config
    assert hc["mem_limit"] == 256 * 1024**2
    assert hc["memswap_limit"] == hc["mem_limit"]


def test_pids_limit():
    assert build(make(resources={"pids": 64})).host_config["pids_limit"] == 64


def test_no_limits_when_none_asked():
    hc = build().host_config
    for key in ("nano_cpus", "mem_limit", "memswap_limit", "pids_limit"):
        assert key not in hc


# -- create arguments -------------------------------------------------------------------


def test_create_arguments():
    req = make(
        engine={
            "image": "registry.local:5000/team/tool:2.1",
            "entrypoint": ["/bin/sh", "-c"],
            "cmd": ["echo $A"],
            "env": {"A": "1", "B": "x=y"},
            "working_dir": "/work",
        }
    )
    spec = build(req)
    assert spec.image == "registry.local:5000/team/tool:2.1"
    assert spec.create["entrypoint"] == ["/bin/sh", "-c"]
    assert spec.create["command"] == ["echo $A"]
    assert spec.create["environment"] == {"A": "1", "B": "x=y"}
    assert spec.create["working_dir"] == "/work"
    assert spec.create["tty"] is False
    assert spec.create["stdin_open"] is False


def test_empty_env_and_unset_fields_are_left_to_the_image():
    spec = build(make(engine={"image": "busybox"}))
    assert spec.create["environment"] is None
    assert spec.create["command"] is None
    assert spec.create["entrypoint"] is None
    assert spec.create["working_dir"] is None


def test_log_config_is_rotated_json_file():
    log_config = build().host_config["log_config"]
    assert log_config.type == "json-file"
    assert parse_bytes(log_config.config["max-size"]) > 0


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry.local:5000/team/tool", ("registry.local:5000/team/tool", "latest")),
        ("registry.local:5000/team/tool:2.1", ("registry.local:5000/team/tool", "2.1")),
    ],
)
def test_image_reference(image, expected):
    assert image_reference(image) == expected


# -- mounts -------------------------------------------------------------------------------


def test_mount_refused_without_allowed_roots(tmp):
    with pytest.raises(MountNotAllowed) as info:
        build(make(mounts=[mount(tmp)]))
    assert "mounts.0.source" in str(info.value)
    assert isinstance(info.value, RequestRejected)
    assert info.value.code == "mount_not_allowed"


def test_mount_below_root_allowed(tmp):
    root = tmp / "root"
    (root / "in").mkdir(parents=True)
    (root / "out").mkdir()
    req = make(mounts=[mount(root / "in", "/in"), mount(root / "out", "/out", read_only=False)])
    spec = build(req, allowed_mount_roots=(str(root),))
    assert spec.host_config["binds"] == [f"{root}/in:/in:ro", f"{root}/out:/out:rw"]


def test_mount_of_root_itself_and_not_yet_existing_child_allowed(tmp):
    spec = build(make(mounts=[mount(tmp), mount(tmp / "later", "/later")]), allowed_mount_roots=(str(tmp),))
    assert spec.host_config["binds"] == [f"{tmp}:/in:ro", f"{tmp}/later:/later:ro"]


def test_root_given_with_trailing_slash(tmp):
    (tmp / "d").mkdir()
    spec = build(make(mounts=[mount(tmp / "d")]), allowed_mount_roots=(f"{tmp}/",))
    assert spec.host_config["binds"] == [f"{tmp}/d:/in:ro"]


def test_second_mount_outside_is_named_by_index(tmp):
    root = tmp / "root"
    root.mkdir()
    with pytest.raises(MountNotAllowed) as info:
        build(make(mounts=[mount(root), mount("/etc", "/etc2")]), allowed_mount_roots=(str(root),))
    assert "mounts.1.source" in str(info.value)


def test_dotdot_escape_refused(tmp):
    root = tmp / "root"
    root.mkdir()
    (tmp / "etc").mkdir()
    with pytest.raises(MountNotAllowed, match=r"mounts\.0\.source"):
        build(make(mounts=[mount(f"{root}/../etc")]), allowed_mount_roots=(str(root),))


def test_symlink_pointing_outside_refused(tmp):
    root = tmp / "root"
    root.mkdir()
    outside = tmp / "secret"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(MountNotAllowed, match=r"mounts\.0\.source"):
        build(make(mounts=[mount(root / "link")]), allowed_mount_roots=(str(root),))
    # ... also when the escape is a component in the middle of the path.
    with pytest.raises(MountNotAllowed):
        build(make(mounts=[mount(root / "link" / "sub")]), allowed_mount_roots=(str(root),))


def test_symlink_staying_inside_allowed(tmp):
    root = tmp / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to(root / "real")
    spec = build(make(mounts=[mount(root / "link")]), allowed_mount_roots=(str(root),))
    assert spec.host_config["binds"] is not None and len(spec.host_config["binds"]) == 1


def test_prefix_sibling_is_not_below_root(tmp):
    (tmp / "data").mkdir()
    (tmp / "data-evil").mkdir()
    with pytest.raises(MountNotAllowed):
        build(make(mounts=[mount(tmp / "data-evil")]), allowed_mount_roots=(str(tmp / "data"),))


def test_prefix_sibling_literal_paths():
    with pytest.raises(MountNotAllowed):
        build(make(mounts=[mount("/data-evil")]), allowed_mount_roots=("/data",))


def test_root_that_is_a_symlink_is_resolved(tmp):
    real = tmp / "real"
    (real / "d").mkdir(parents=True)
    (tmp / "alias").symlink_to(real)
    # Allowed by the alias, source given by its real path (and the other way round).
    build(make(mounts=[mount(real / "d")]), allowed_mount_roots=(str(tmp / "alias"),))
    build(make(mounts=[mount(tmp / "alias" / "d")]), allowed_mount_roots=(str(real),))


def test_one_of_several_roots_suffices(tmp):
    (tmp / "a").mkdir()
    (tmp / "b" / "x").mkdir(parents=True)
    spec = build(make(mounts=[mount(tmp / "b" / "x")]), allowed_mount_roots=(str(tmp / "a"), str(tmp / "b")))
    assert spec.host_config["binds"] == [f"{tmp}/b/x:/in:ro"]


def test_bind_names_the_path_that_was_checked(tmp):
    root = tmp / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp / "host-secrets"
    outside.mkdir()
    link = root / "link"
    link.symlink_to(root / "inside")
    spec = build(make(mounts=[mount(link)]), allowed_mount_roots=(str(root),))
    # The symlink is swapped after the check, before Docker creates the container.
    link.unlink()
    link.symlink_to(outside)
    bind_source = spec.host_config["binds"][0].rsplit(":", 2)[0]
    assert os.path.realpath(bind_source) == str(root / "inside")


# -- GPUs -----------------------------------------------------------------------------------


def _device_request(spec: ContainerSpec):
    requests = spec.host_config["device_requests"]
    assert len(requests) == 1
    return requests[0]


def test_nvidia_gpus_by_count():
    spec = build(make(resources={"gpus": {"count": 2}}))
    dr = _device_request(spec)
    assert dr.driver == "nvidia"
    assert dr.count == 2
    assert dr.capabilities == [["gpu"]]
    assert not dr.device_ids
    assert "devices" not in spec.host_config


def test_nvidia_all_gpus():
    assert _device_request(build(make(resources={"gpus": {"count": -1}}))).count == -1


def test_nvidia_gpus_by_device_ids():
    dr = _device_request(build(make(resources={"gpus": {"vendor": "nvidia", "device_ids": ["0", "GPU-abc"]}})))
    assert dr.driver == "nvidia"
    assert dr.device_ids == ["0", "GPU-abc"]
    assert dr.count == 0  # with device ids, Docker must not also take "all"
    assert dr.capabilities == [["gpu"]]


@pytest.mark.parametrize(
    ("gpus", "granted"), [({"count": 2}, 2), ({"count": -1}, -1), ({"device_ids": ["0", "GPU-abc"]}, 2)]
)
def test_nvidia_gpus_granted_is_what_the_device_request_asks(gpus, granted):
    assert gpus_granted(make(resources={"gpus": gpus}).resources.gpus) == granted


@pytest.fixture
def gpu_nodes(monkeypatch):
    """This host seen with AMD and Intel device nodes, so their specs build without the hardware."""
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: str(p).startswith(("/dev/kfd", "/dev/dri")) or real_exists(p))


@pytest.mark.parametrize(
    ("gpus", "nodes", "granted"),
    [
        ({"vendor": "amd", "count": -1}, ["/dev/kfd", "/dev/dri"], -1),
        # only the named render nodes; /dev/kfd gives no GPU whose render node the container cannot open
        ({"vendor": "amd", "device_ids": ["1", "0"]}, ["/dev/kfd", "/dev/dri/renderD129", "/dev/dri/renderD128"], 2),
        ({"vendor": "amd", "device_ids": ["0", "00"]}, ["/dev/kfd", "/dev/dri/renderD128"], 1),  # one node, once
        ({"vendor": "intel", "count": -1}, ["/dev/dri"], -1),
        ({"vendor": "intel", "device_ids": ["2"]}, ["/dev/dri/renderD130"], 1),
    ],
)
def test_amd_and_intel_map_exactly_the_gpus_the_policy_counts(gpu_nodes, gpus, nodes, granted):
    request = make(resources={"gpus": gpus})
    spec = build(request)
    assert spec.host_config["devices"] == [f"{n}:{n}:rwm" for n in nodes]
    assert spec.host_config["group_add"] == ["video"]
    assert "device_requests" not in spec.host_config
    assert gpus_granted(request.resources.gpus) == granted


@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_amd_or_intel_without_device_ids_counts_as_every_gpu_whatever_its_count(gpu_nodes, vendor):
    # the schema refuses such a count; one that got past it still maps all of /dev/dri, and is counted so
    gpus = GpuRequest.model_construct(vendor=vendor, count=1, device_ids=None)
    request = make().model_copy(update={"resources": make().resources.model_copy(update={"gpus": gpus})})
    assert "/dev/dri:/dev/dri:rwm" in build(request).host_config["devices"]
    assert gpus_granted(gpus) == -1


@pytest.mark.skipif(os.path.exists("/dev/kfd") and os.path.exists("/dev/dri"), reason="this host has AMD GPU device nodes")
def test_amd_gpu_unavailable_without_device_nodes():
    with pytest.raises(GpuUnavailableError) as info:
        build(make(resources={"gpus": {"vendor": "amd", "count": -1}}))
    assert "resources.gpus" in str(info.value)
    assert info.value.code == "gpu_unavailable"


@pytest.mark.skipif(os.path.exists("/dev/dri"), reason="this host has /dev/dri")
@pytest.mark.parametrize("gpus", [{"vendor": "intel", "count": -1}, {"vendor": "intel", "device_ids": ["0"]}])
def test_intel_gpu_unavailable_without_device_nodes(gpus):
    with pytest.raises(GpuUnavailableError) as info:
        build(make(resources={"gpus": gpus}))
    assert "resources.gpus" in str(info.value)
    assert "/dev/dri" in str(info.value)


def test_gpu_device_ids_cannot_map_arbitrary_host_devices():
    try:
        req = make(resources={"gpus": {"vendor": "intel", "device_ids": ["/dev/null"]}})
    except ValueError:  # refused by the schema: fine
        return
    try:
        spec = build(req)
    except ExecutorError:  # refused by the executor: fine
        return
    devices = spec.host_config.get("devices", [])
    assert not any(d.startswith("/dev/null") for d in devices), devices
