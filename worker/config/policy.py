"""What the operator allows on this worker, whatever a request asks for.

A request that validates against the wire schema can still ask for more than
this node should give: 64 GiB of memory, an image nobody vetted, the host's
GPUs, a pull from a registry, the host network bridge, a bind mount of ``/``.
``WorkerPolicy.check`` refuses those before anything reaches Docker -- the
outcome is ``rejected`` and its message names the field, the limit and the
setting that sets it -- and fills in the safe defaults (memory and pids caps,
a time limit, a pull policy this worker allows) a request left out.

The defaults are safe on a shared host: no network bridge, no GPU, every
container capped at 1 GiB of memory and 512 processes unless it asks (and may
ask up to 8 GiB / 4096), at most 24 h, at most 16 MiB of output kept per
stream. Any limit can be lifted with ``none``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from schemas import DEFAULT_MAX_INPUT_BYTES, ExecutionRequest, format_size, parse_size
from schemas.container import ALL_CAPABILITIES, normalize_capability
from worker.executor import MountNotAllowed, RequestRejected
from worker.executor.spec import ExecutorPolicy, checked_binds, gpus_granted
from worker.config.images import ImagePattern, image_allowed

KiB, MiB, GiB = 1024, 1024**2, 1024**3

DEFAULT_MAX_MEMORY = 8 * GiB
DEFAULT_MEMORY = 1 * GiB
DEFAULT_MAX_PIDS = 4096
DEFAULT_PIDS = 512
DEFAULT_MAX_TIMEOUT_SECONDS = 24 * 3600.0
DEFAULT_MAX_OUTPUT_BYTES = 16 * MiB
# Files in and out (worker/execution/files.py), counted as file contents per execution.
DEFAULT_MAX_OUTPUT_FILES_BYTES = 16 * MiB
# A GPU is host hardware shared by every container on it: none unless the operator says how many.
DEFAULT_MAX_GPUS = 0
# docker run --stop-timeout: a longer grace holds a cancel, a timeout and the worker's shutdown this long.
DEFAULT_MAX_STOP_TIMEOUT_SECONDS = 60
# The request schema's pull policies, and the one a request carries when it names none.
PULL_POLICIES: tuple[str, ...] = get_args(ExecutionRequest.model_fields["pull_policy"].annotation)
DEFAULT_PULL_POLICY: str = ExecutionRequest.model_fields["pull_policy"].default
# Docker refuses a memory limit below 6 MiB.
MIN_MEMORY = 6 * MiB

# Policy field -> environment variable; worker.config.settings adds these to its own.
POLICY_ENV_VARS: dict[str, str] = {
    "max_memory": "DOCKRQ_MAX_MEMORY",
    "max_cpus": "DOCKRQ_MAX_CPUS",
    "max_pids": "DOCKRQ_MAX_PIDS",
    "max_timeout_seconds": "DOCKRQ_MAX_TIMEOUT_SECONDS",
    "max_output_bytes": "DOCKRQ_MAX_OUTPUT_BYTES",
    "max_input_bytes": "DOCKRQ_MAX_INPUT_BYTES",
    "max_output_files_bytes": "DOCKRQ_MAX_OUTPUT_FILES_BYTES",
    "max_gpus": "DOCKRQ_MAX_GPUS",
    "allowed_images": "DOCKRQ_ALLOWED_IMAGES",
    "allowed_pull_policies": "DOCKRQ_ALLOWED_PULL_POLICIES",
    "allowed_mount_roots": "DOCKRQ_ALLOWED_MOUNT_ROOTS",
    "allow_bridge": "DOCKRQ_ALLOW_BRIDGE",
    "default_memory": "DOCKRQ_DEFAULT_MEMORY",
    "default_pids": "DOCKRQ_DEFAULT_PIDS",
    "allowed_caps": "DOCKRQ_ALLOWED_CAPS",
    "max_stop_timeout_seconds": "DOCKRQ_MAX_STOP_TIMEOUT_SECONDS",
}

_UNLIMITED = {"none", "unlimited", "off"}


class PolicyViolation(RequestRejected):
    """The request is valid but asks for more than this worker allows."""

    code = "policy_violation"


def _unlimited(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _UNLIMITED:
        return None
    return value


def _size(value: Any) -> Any:
    value = _unlimited(value)
    return value if value is None else parse_size(value)


def _list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Size = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_size)]
MemorySize = Annotated[Annotated[int, Field(ge=MIN_MEMORY)] | None, BeforeValidator(_size)]
Count = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_unlimited)]
CountOrZero = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_unlimited)]
Positive = Annotated[Annotated[float, Field(gt=0)] | None, BeforeValidator(_unlimited)]


class WorkerPolicy(BaseModel):
    """The operator's limits for one worker. ``None`` means no limit / no default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_memory: MemorySize = DEFAULT_MAX_MEMORY
    max_cpus: Positive = None
    max_pids: Count = DEFAULT_MAX_PIDS
    max_timeout_seconds: Positive = DEFAULT_MAX_TIMEOUT_SECONDS
    max_output_bytes: Size = DEFAULT_MAX_OUTPUT_BYTES
    max_input_bytes: Size = DEFAULT_MAX_INPUT_BYTES
    max_output_files_bytes: Size = DEFAULT_MAX_OUTPUT_FILES_BYTES
    max_gpus: CountOrZero = DEFAULT_MAX_GPUS
    allowed_images: tuple[str, ...] = ("*",)
    allowed_pull_policies: tuple[str, ...] = PULL_POLICIES
    allowed_mount_roots: tuple[str, ...] = ()
    allow_bridge: bool = False
    default_memory: MemorySize = DEFAULT_MEMORY
    default_pids: Count = DEFAULT_PIDS
    # Capabilities a request may add (cap_add); none by default. Dropping is always allowed.
    allowed_caps: tuple[str, ...] = ()
    max_stop_timeout_seconds: CountOrZero = DEFAULT_MAX_STOP_TIMEOUT_SECONDS

    @field_validator("allowed_images", "allowed_pull_policies", "allowed_mount_roots", "allowed_caps", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _list(value)

    @field_validator("allowed_images")
    @classmethod
    def _patterns(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        if not patterns:
            raise ValueError("give at least one image pattern ('*' allows every image)")
        for pattern in patterns:
            if any(c.isspace() or c == "\x00" for c in pattern):
                raise ValueError(f"image pattern {pattern!r} must not contain whitespace")
            ImagePattern.parse(pattern)  # one Docker could not read ('https://...') is a typo: say so at start-up
        return patterns

    @field_validator("allowed_pull_policies")
    @classmethod
    def _pull_policies(cls, policies: tuple[str, ...]) -> tuple[str, ...]:
        # checked here rather than typed as a Literal, so the error names the setting, not an index in it
        if not policies:
            raise ValueError(f"give at least one of {', '.join(PULL_POLICIES)}")
        for policy in policies:
            if policy not in PULL_POLICIES:
                raise ValueError(f"{policy!r} is not a pull policy (one of {', '.join(PULL_POLICIES)})")
        return tuple(dict.fromkeys(policies))

    @field_validator("allowed_caps")
    @classmethod
    def _caps(cls, caps: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalize_capability(c) for c in caps))  # 'cap_net_admin' is NET_ADMIN

    @field_validator("allowed_mount_roots")
    @classmethod
    def _absolute(cls, roots: tuple[str, ...]) -> tuple[str, ...]:
        for root in roots:
            if not root.startswith("/"):
                raise ValueError(f"mount root {root!r} must be an absolute path")
        return roots

    @field_validator("max_cpus", "max_timeout_seconds")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number (or 'none' for no limit)")
        return value

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> WorkerPolicy:
        # A default above the limit would reject every request that relies on it:
        # the limit wins (DOCKRQ_MAX_MEMORY=512m alone gives 512m containers).
        updates = {}
        if self.default_memory is not None and self.max_memory is not None and self.default_memory > self.max_memory:
            updates["default_memory"] = self.max_memory
        if self.default_pids is not None and self.max_pids is not None and self.default_pids > self.max_pids:
            updates["default_pids"] = self.max_pids
        for name, value in updates.items():
            object.__setattr__(self, name, value)
        return self

    @property
    def default_pull_policy(self) -> str:
        """What a request with the schema's default (``if_not_present``) runs with when this worker
        does not allow that: ``never`` if allowed, else ``always``.

        Every request carries a pull policy (producers send the default too), so one that
        names none cannot be told from one that names the default; refusing it would refuse
        nearly every request on a ``never`` worker. The default is a "no preference" this
        worker settles; ``always`` or ``never`` asked for and not allowed is refused.
        """
        if DEFAULT_PULL_POLICY in self.allowed_pull_policies:
            return DEFAULT_PULL_POLICY
        return "never" if "never" in self.allowed_pull_policies else "always"

    @property
    def executor_policy(self) -> ExecutorPolicy:
        """The part the executor enforces itself when it builds the container (mounts, network):
        the executor of a worker is made with it (``worker.service.runtime.build_executor``)."""
        return ExecutorPolicy(self.allowed_mount_roots, self.allow_bridge)

    # -- the check -------------------------------------------------------------

    def check(self, request: ExecutionRequest) -> ExecutionRequest:
        """The request with this worker's defaults filled in, or PolicyViolation /
        MountNotAllowed naming every field over its limit. Makes no Docker call."""
        problems: list[str] = []

        def over(field: str, value: float, limit: float | None, setting: str) -> None:
            if limit is not None and value > limit:
                problems.append(
                    f"{field}: {_number(value)} is above this worker's limit {_number(limit)} ({POLICY_ENV_VARS[setting]})"
                )

        res = request.resources
        if res.memory is not None:
            over("resources.memory", res.memory, self.max_memory, "max_memory")
        if res.cpus is not None:
            over("resources.cpus", res.cpus, self.max_cpus, "max_cpus")
        if res.pids is not None:
            over("resources.pids", res.pids, self.max_pids, "max_pids")
        if res.gpus is not None and self.max_gpus is not None:
            gpus = gpus_granted(res.gpus)  # what the container gets: an AMD/Intel "all" is the host's /dev/dri
            if gpus == -1:  # every GPU the host has: more than any limit can vouch for without asking Docker
                problems.append(
                    f"resources.gpus: -1 (all) is above this worker's limit {self.max_gpus} ({POLICY_ENV_VARS['max_gpus']})"
                )
            else:
                over("resources.gpus", gpus, self.max_gpus, "max_gpus")
        if request.timeout_seconds is not None:
            over("timeout_seconds", request.timeout_seconds, self.max_timeout_seconds, "max_timeout_seconds")
        over("output_limit_bytes", request.output_limit_bytes, self.max_output_bytes, "max_output_bytes")
        if request.inputs is not None:
            over("inputs.bytes", request.inputs.bytes, self.max_input_bytes, "max_input_bytes")
        if request.stop_timeout is not None:
            over("stop_timeout", request.stop_timeout, self.max_stop_timeout_seconds, "max_stop_timeout_seconds")
        refused_caps = [c for c in request.cap_add if not self.cap_allowed(c)]
        if refused_caps:
            problems.append(
                f"cap_add: {', '.join(refused_caps)} {'is' if len(refused_caps) == 1 else 'are'} not allowed on this worker "
                f"(allowed: {', '.join(self.allowed_caps) or 'none'}) ({POLICY_ENV_VARS['allowed_caps']})"
            )
        if not image_allowed(request.engine.image, self.allowed_images):
            problems.append(
                f"engine.image: {request.engine.image!r} is not allowed on this worker "
                f"(allowed: {', '.join(self.allowed_images)}) ({POLICY_ENV_VARS['allowed_images']})"
            )
        if request.pull_policy not in self.allowed_pull_policies and request.pull_policy != DEFAULT_PULL_POLICY:
            problems.append(
                f"pull_policy: {request.pull_policy!r} is not allowed on this worker "
                f"(allowed: {', '.join(self.allowed_pull_policies)}) ({POLICY_ENV_VARS['allowed_pull_policies']})"
            )
        bridge = self.executor_policy.bridge_refusal(request)
        if bridge is not None:
            problems.append(f"{bridge} ({POLICY_ENV_VARS['allow_bridge']})")
        mounts_refused = False
        if request.mounts:
            try:
                checked_binds(request, self.executor_policy)
            except MountNotAllowed as exc:
                mounts_refused = True
                problems.append(f"{exc} ({POLICY_ENV_VARS['allowed_mount_roots']})")
        if problems:
            error = MountNotAllowed if mounts_refused and len(problems) == 1 else PolicyViolation
            raise error("; ".join(_clip(p) for p in problems))
        return self._with_defaults(request)

    def cap_allowed(self, capability: str) -> bool:
        """Whether a request may add ``capability`` (normalised, e.g. ``NET_ADMIN``) on this worker:
        listed in DOCKRQ_ALLOWED_CAPS, or that lists ALL. Adding ALL needs ALL listed."""
        return ALL_CAPABILITIES in self.allowed_caps or capability in self.allowed_caps

    def _with_defaults(self, request: ExecutionRequest) -> ExecutionRequest:
        res = request.resources
        resources: dict[str, Any] = {}
        if res.memory is None and self.default_memory is not None:
            resources["memory"] = self.default_memory
        if res.pids is None and self.default_pids is not None:
            resources["pids"] = self.default_pids
        update: dict[str, Any] = {}
        if resources:
            update["resources"] = res.model_copy(update=resources)
        if request.timeout_seconds is None and self.max_timeout_seconds is not None:
            update["timeout_seconds"] = self.max_timeout_seconds
        if request.pull_policy not in self.allowed_pull_policies:  # the schema's default: check let it through
            update["pull_policy"] = self.default_pull_policy
        cap = self.max_output_files_bytes  # output files are capped, not refused: what does not fit is left out
        if request.outputs and cap is not None and request.output_files_limit_bytes > cap:
            update["output_files_limit_bytes"] = cap
        return request.model_copy(update=update) if update else request

    def describe(self) -> str:
        """One line for the worker's start-up log."""

        def show(value: Any, size: bool = False) -> str:
            if value is None:
                return "none"
            return format_size(value) if size else _number(value)

        return (
            f"memory {show(self.default_memory, True)} default / {show(self.max_memory, True)} max, "
            f"pids {show(self.default_pids)} default / {show(self.max_pids)} max, "
            f"cpus max {show(self.max_cpus)}, gpus max {show(self.max_gpus)}, "
            f"timeout max {show(self.max_timeout_seconds)} s, "
            f"output max {show(self.max_output_bytes, True)} per stream, "
            f"input files max {show(self.max_input_bytes, True)}, output files max {show(self.max_output_files_bytes, True)}, "
            f"images {','.join(self.allowed_images)}, pull {','.join(self.allowed_pull_policies)}, "
            f"mount roots {','.join(self.allowed_mount_roots) or 'none'}, "
            f"bridge {'allowed' if self.allow_bridge else 'refused'}, "
            f"caps added {','.join(self.allowed_caps) or 'none'}, stop timeout max {show(self.max_stop_timeout_seconds)} s"
        )


def _clip(problem: str, limit: int = 400) -> str:
    # A mount path has no length limit in the schema; the outcome message must stay small.
    return problem if len(problem) <= limit else problem[: limit - 3] + "..."


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
