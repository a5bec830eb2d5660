"""From an execution request to the exact container the daemon is asked to create.

Pure functions over the request, the executor id and the policy: no Docker call
is made here, so every safety rule (no privilege, no network by default, mounts
only below allowed roots, real cgroup limits) is unit-tested without a daemon.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from docker.types import DeviceRequest, LogConfig

from schemas import ExecutionRequest, GpuRequest

from .errors import GpuUnavailableError, MountNotAllowed, RequestRejected
from .run_options import run_options

LABEL_EXECUTOR = "dockrq.executor"
LABEL_EXECUTION = "dockrq.execution"
LABEL_JOB = "dockrq.job"
LABEL_CREATED = "dockrq.created"

# Docker keeps a copy of the output on disk for `docker logs` and for adoption
# after a worker restart; rotation keeps a flood from filling the disk.
_LOG_MAX_SIZE = "16m"

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


@dataclass(frozen=True)
class ExecutorPolicy:
    """What the operator allows on this node, whatever a request asks for.

    Its two checks are ``checked_binds`` (mounts) and ``bridge_refusal`` (network);
    ``build_container_spec`` enforces both, and a worker's ``WorkerPolicy.check``
    reports them with the setting to change.
    """

    allowed_mount_roots: tuple[str, ...] = ()
    allow_bridge_network: bool = True

    def bridge_refusal(self, request: ExecutionRequest) -> RequestRejected | None:
        """The error for a request asking for the bridge network where it is not allowed, else None."""
        if request.network == "bridge" and not self.allow_bridge_network:
            return RequestRejected("network: 'bridge' is not allowed on this worker")
        return None


@dataclass(frozen=True)
class ContainerSpec:
    """Arguments of ``APIClient.create_container`` plus ``create_host_config``."""

    name: str
    image: str
    labels: dict[str, str]
    create: dict[str, Any] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)


def executor_labels(executor_id: str) -> dict[str, str]:
    return {LABEL_EXECUTOR: executor_id}


def container_name(executor_id: str, execution_id: str) -> str:
    """Deterministic, so a second create of the same execution collides (409) and
    the leftover container is adopted instead of a twin being started."""
    # The digest keeps names distinct where sanitizing or the '-' joint would not
    # ("a-b" + "c" vs "a" + "b-c", "node/1" vs "node:1").
    digest = hashlib.sha1(f"{executor_id}\0{execution_id}".encode()).hexdigest()[:8]
    return _NAME_UNSAFE.sub("-", f"dockrq-{executor_id}-{execution_id}-{digest}")


def image_reference(image: str) -> tuple[str, str]:
    """Repository and tag (``latest`` when none given), as ``docker pull`` reads them."""
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    if tag is None:
        return repo, "latest"
    return repo, tag


def checked_binds(request: ExecutionRequest, policy: ExecutorPolicy) -> list[str]:
    """Bind strings for the mounts, each below an allowed root, or MountNotAllowed.

    Paths are resolved (symlinks, ``..``) before comparing, so ``/allowed/../etc``
    or a symlink pointing out of the root is refused; and the *resolved* path is
    what Docker is given, so swapping a symlink after the check changes nothing.
    """
    roots = [os.path.realpath(r) for r in policy.allowed_mount_roots]
    binds = []
    for i, mount in enumerate(request.mounts):
        real = os.path.realpath(mount.source)
        if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots):
            allowed = ", ".join(policy.allowed_mount_roots) or "none"
            raise MountNotAllowed(
                f"mounts.{i}.source: {mount.source!r} is not below an allowed mount root (allowed: {allowed})"
            )
        binds.append(f"{real}:{mount.target}:{'ro' if mount.read_only else 'rw'}")
    return binds


def gpus_granted(gpus: GpuRequest) -> int:
    """How many GPUs the container built for ``gpus`` can use; -1 for every GPU on the host.

    The worker's DOCKRQ_MAX_GPUS counts this, so it is read off what ``_gpu_host_config``
    maps, not off what the request says: an AMD/Intel request without ``device_ids``
    gets the whole of ``/dev/dri`` whatever its count. ``/dev/kfd`` adds no GPU: the
    kernel lets a KFD client use only the GPUs whose render node its cgroup may open.
    """
    if gpus.device_ids is not None:
        return len(gpus.device_ids) if gpus.vendor == "nvidia" else len(_render_nodes(gpus.device_ids))
    return gpus.count if gpus.vendor == "nvidia" and gpus.count is not None else -1


def _render_nodes(device_ids: list[str]) -> list[str]:
    # index N is /dev/dri/renderD(128+N); "0" and "00" are one node, mapped (and counted) once
    return list(dict.fromkeys(f"/dev/dri/renderD{128 + int(i)}" for i in device_ids))  # digits: checked by the schema


def _gpu_host_config(gpus: GpuRequest) -> dict[str, Any]:
    if gpus.vendor == "nvidia":
        request = DeviceRequest(
            driver="nvidia",
            count=gpus.count if gpus.device_ids is None else 0,
            device_ids=gpus.device_ids or [],
            capabilities=[["gpu"]],
        )
        return {"device_requests": [request]}
    # AMD (ROCm) needs the KFD compute node and the DRI render nodes; Intel only DRI.
    # Without device_ids that is the whole DRI directory: every GPU (the schema allows it only as count -1).
    nodes = ["/dev/kfd"] if gpus.vendor == "amd" else []
    nodes += ["/dev/dri"] if gpus.device_ids is None else _render_nodes(gpus.device_ids)
    missing = [n for n in nodes if not os.path.exists(n)]
    if missing:
        raise GpuUnavailableError(f"resources.gpus: {gpus.vendor} GPU device nodes missing on this host: {', '.join(missing)}")
    return {"devices": [f"{n}:{n}:rwm" for n in nodes], "group_add": ["video"]}


def build_container_spec(request: ExecutionRequest, executor_id: str, policy: ExecutorPolicy) -> ContainerSpec:
    """Raises MountNotAllowed / RequestRejected-family errors before Docker is touched."""
    binds = checked_binds(request, policy)
    bridge = policy.bridge_refusal(request)
    if bridge is not None:
        raise bridge

    engine, res = request.engine, request.resources
    labels = {
        **request.labels,  # the request's own (never in dockrq's namespace: the schema refuses it)
        LABEL_EXECUTOR: executor_id,
        LABEL_EXECUTION: request.execution_id,
        LABEL_CREATED: f"{time.time():.3f}",
    }
    if request.job_id:
        labels[LABEL_JOB] = request.job_id

    host_config: dict[str, Any] = {
        "network_mode": request.network,
        "privileged": False,
        "security_opt": ["no-new-privileges"],
        "log_config": LogConfig(type="json-file", config={"max-size": _LOG_MAX_SIZE, "max-file": "1"}),
        "binds": binds or None,
    }
    if res.cpus is not None:
        host_config["nano_cpus"] = round(res.cpus * 1e9)
    if res.memory is not None:
        host_config["mem_limit"] = res.memory
        host_config["memswap_limit"] = res.memory  # no swap: the limit is the limit
    if res.pids is not None:
        host_config["pids_limit"] = res.pids
    if res.gpus is not None:
        host_config.update(_gpu_host_config(res.gpus))

    create: dict[str, Any] = {
        "command": engine.cmd,
        "entrypoint": engine.entrypoint,
        "environment": dict(engine.env) or None,
        "working_dir": engine.working_dir,
        "labels": labels,
        "stdin_open": False,
        "tty": False,  # no TTY: stdout and stderr stay two streams
    }
    options = run_options(request)  # --user, --read-only, --tmpfs, --cap-add, ... (run_options.py)
    create.update(options.create)
    host_config.update(options.host_config)
    return ContainerSpec(
        name=container_name(executor_id, request.execution_id),
        image=engine.image,
        labels=labels,
        create=create,
        host_config=host_config,
    )
