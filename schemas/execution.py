"""What one execution is: the request a producer sends and the result it gets back.

These models are the public contract shared by the producer, the worker and any
scheduler written in another language, so field names never change silently and
every request is validated here, before anything reaches Docker or Redis.
Unknown fields are refused rather than ignored: a misspelt ``timout_seconds``
must not quietly run a job without a time limit.
"""

from __future__ import annotations

import base64
import enum
import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from .files import (
    DEFAULT_OUTPUT_FILES_LIMIT,
    MAX_FILE_PATHS,
    MAX_OUTPUT_FILES_LIMIT,
    ContainerPath,
    InputsSpec,
    OutputFile,
    drop_default_file_fields,
    overlapping,
)
from .container import (
    INT64_MAX,
    TmpfsMount,
    Ulimit,
    check_labels,
    check_stdin,
    check_tmpfs,
    check_ulimits,
    check_user,
    compact_payload,
    normalize_capability,
    normalize_signal,
)
from .scheduling import (
    DEFAULT_RETRY_ON,
    MAX_CONCURRENCY_LIMIT,
    MAX_RETRIES,
    BackoffSeconds,
    ConcurrencyKey,
    RetryStatus,
    backoff_before,
    check_backoff,
    check_concurrency_pair,
    compact_scheduling,
)
from .reference import check_image_reference
from .text import check_storable

EXECUTION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_OUTPUT_LIMIT = 1024 * 1024  # bytes per stream
MAX_OUTPUT_LIMIT = 1024 * 1024 * 1024

ExecutionId = Annotated[str, StringConstraints(pattern=EXECUTION_ID_PATTERN)]


def new_execution_id() -> str:
    return uuid.uuid4().hex


def _no_nul(value: str, what: str) -> str:
    # Docker and the kernel cut strings at NUL; refusing them here keeps what runs
    # identical to what was asked for.
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a docker-style size string (``256m``, ``1g``, ``512KiB``)."""
    if isinstance(value, bool):
        raise ValueError("size must be a number of bytes or a string like '256m'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 32:
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError("size must be a number of bytes or a string like '256m'")


def format_size(size: int) -> str:
    """Bytes as docker writes them (``256m``) when that is exact, else plain bytes; ``parse_size`` reads it back."""
    for suffix in ("g", "m", "k"):
        unit = _SIZE_UNITS[suffix]
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


class EngineSpec(_Model):
    """What to run: the image and how to start it, as ``docker run`` would."""

    image: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = Field(default=None, description="docker run --user: uid[:gid] or name[:group]")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError("image must not contain whitespace")
        return check_image_reference(_no_nul(v, "image"))  # Docker's grammar: schemas/reference.py

    @field_validator("entrypoint", "cmd")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        for arg in v or ():
            _no_nul(arg, "arguments")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or "=" in key:
                raise ValueError(f"environment variable name {key!r} is empty or contains '='")
            _no_nul(key, "environment names")
            _no_nul(value, "environment values")
        return v

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("working_dir must be an absolute path")
        return v if v is None else _no_nul(v, "working_dir")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        return check_user(v)


class GpuRequest(_Model):
    """GPUs by count or by device index. NVIDIA goes through Docker device requests;
    ``amd``/``intel`` map the vendor's device nodes (``/dev/kfd``+``/dev/dri``, ``/dev/dri``).

    An AMD/Intel GPU is its DRI render node, and nothing picks N of them for us the way
    the NVIDIA runtime does: such a request names its render nodes (``device_ids``) or
    asks for all of them (``count: -1``, the whole of ``/dev/dri``). A count of N is
    refused rather than quietly given every GPU on the host.
    """

    vendor: Literal["nvidia", "amd", "intel"] = "nvidia"
    count: StrictInt | None = Field(default=None, ge=-1, description="-1 means all GPUs")
    device_ids: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]] | None = Field(
        default=None, min_length=1
    )

    @model_validator(mode="after")
    def _one_of(self) -> GpuRequest:
        if (self.count is None) == (self.device_ids is None):
            raise ValueError("give exactly one of count or device_ids")
        if self.count == 0:
            raise ValueError("count must be -1 (all) or at least 1")
        if self.vendor != "nvidia" and self.count is not None and self.count != -1:
            raise ValueError(
                f"{self.vendor} GPUs are not picked by count ({self.count}): name their render nodes "
                f"in device_ids (0, 1, ...) or give count -1 (all)"
            )
        # AMD/Intel ids index DRI render nodes; anything else would name a host device.
        if self.vendor != "nvidia" and self.device_ids and not all(i.isdigit() for i in self.device_ids):
            raise ValueError(f"device_ids for {self.vendor} are render node indexes (0, 1, ...)")
        return self


class Resources(_Model):
    """Limits that become real cgroup limits: cpus in cores, memory in bytes."""

    # Docker's smallest CPU quota is 0.01 core; below it a limit would be refused or lost.
    # Numbers are strict (here and in every request field): a JSON true is not 1.
    cpus: StrictFloat | None = Field(default=None, ge=0.01, le=1024)
    memory: StrictInt | None = Field(default=None, ge=6 * 1024 * 1024, le=INT64_MAX, description="bytes; '256m' accepted")
    pids: StrictInt | None = Field(default=None, ge=1, le=INT64_MAX)
    gpus: GpuRequest | None = None
    # /dev/shm (docker run --shm-size); Docker's default is 64 MiB. Counted against memory.
    shm_size: StrictInt | None = Field(default=None, ge=4096, le=INT64_MAX, description="bytes; '256m' accepted")

    @field_validator("cpus")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("cpus must be a finite number")
        return v

    @field_validator("memory", "shm_size", mode="before")
    @classmethod
    def _memory(cls, v: object) -> object:
        return v if v is None else parse_size(v)  # type: ignore[arg-type]


class Mount(_Model):
    """A host path bound into the container; the worker's policy decides which are allowed."""

    source: Annotated[str, StringConstraints(min_length=1)]
    target: Annotated[str, StringConstraints(min_length=1)]
    read_only: bool = True

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if ":" in v:  # Docker's bind syntax is source:target:mode
            raise ValueError("must not contain ':'")
        return _no_nul(v, "mount paths")


class ExecutionRequest(_Model):
    """One execution: the unit a producer enqueues and a worker runs exactly once."""

    execution_id: ExecutionId = Field(default_factory=new_execution_id)
    job_id: Annotated[str, StringConstraints(pattern=r"^[^\x00]{1,256}$")] | None = None
    engine: EngineSpec
    resources: Resources = Field(default_factory=Resources)
    mounts: list[Mount] = Field(default_factory=list)
    network: Literal["none", "bridge"] = "none"
    timeout_seconds: StrictFloat | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    output_limit_bytes: StrictInt = Field(default=DEFAULT_OUTPUT_LIMIT, ge=0, le=MAX_OUTPUT_LIMIT)
    pull_policy: Literal["if_not_present", "always", "never"] = "if_not_present"
    retries: StrictInt = Field(default=0, ge=0, le=MAX_RETRIES, description="attempts allowed after the first (see retry_on)")
    # Retries and concurrency limits (schemas/scheduling.py; worker/execution/retries.py,
    # producer/concurrency.py). Written into the rq job only when set (``_wire_form``).
    retry_on: list[RetryStatus] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON), min_length=1, max_length=4,
        description="the outcome statuses that use up a retry",
    )
    retry_backoff_seconds: BackoffSeconds | list[BackoffSeconds] = Field(
        default=0, description="wait before each retry, as rq's Retry(interval=): a number, or one per retry (the last repeats)"
    )
    concurrency_key: ConcurrencyKey | None = None
    concurrency_limit: StrictInt | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_LIMIT)
    # docker run options (schemas/container.py); the worker's policy bounds cap_add and stop_timeout.
    read_only: bool = False
    tmpfs: list[TmpfsMount] = Field(default_factory=list, max_length=16)
    cap_add: list[str] = Field(default_factory=list, max_length=64)
    cap_drop: list[str] = Field(default_factory=list, max_length=64)
    ulimits: list[Ulimit] = Field(default_factory=list, max_length=16)
    init: bool = False
    stop_signal: str | None = None
    stop_timeout: StrictInt | None = Field(default=None, ge=0, le=24 * 3600, description="seconds; grace of every stop")
    labels: dict[str, str] = Field(default_factory=dict)
    stdin_base64: str | None = Field(default=None, description="bytes given to the container's stdin (docker run -i)")
    # Files in and out (schemas/files.py): the input archive's announcement, the container
    # paths collected once the container has ended, and the bound on their contents.
    inputs: InputsSpec | None = None
    outputs: list[ContainerPath] = Field(default_factory=list, max_length=MAX_FILE_PATHS)
    output_files_limit_bytes: StrictInt = Field(default=DEFAULT_OUTPUT_FILES_LIMIT, ge=0, le=MAX_OUTPUT_FILES_LIMIT)

    @field_validator("timeout_seconds")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("timeout_seconds must be a finite number")
        return v

    @field_validator("retry_on")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("retry_backoff_seconds")
    @classmethod
    def _backoff(cls, v: int | list[int]) -> int | list[int]:
        return check_backoff(v)

    @model_validator(mode="after")
    def _concurrency_pair(self) -> ExecutionRequest:
        check_concurrency_pair(self.concurrency_key, self.concurrency_limit)
        return self

    def backoff_before(self, attempt: int) -> int:
        """Seconds to wait before ``attempt`` (2 = the first retry); see schemas.scheduling."""
        return backoff_before(self.retry_backoff_seconds, attempt)

    @field_validator("cap_add", "cap_drop")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_capability(c) for c in v))

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, v: str | None) -> str | None:
        return v if v is None else normalize_signal(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

    @field_validator("stdin_base64")
    @classmethod
    def _stdin(cls, v: str | None) -> str | None:
        return check_stdin(v)

    @field_validator("tmpfs")
    @classmethod
    def _tmpfs(cls, v: list[TmpfsMount]) -> list[TmpfsMount]:
        return check_tmpfs(v)

    @field_validator("ulimits")
    @classmethod
    def _ulimits(cls, v: list[Ulimit]) -> list[Ulimit]:
        return check_ulimits(v)

    @field_validator("outputs")
    @classmethod
    def _distinct_outputs(cls, v: list[str]) -> list[str]:
        clash = overlapping(v)
        if clash is not None:
            raise ValueError(f"{clash[1]!r} is {clash[0]!r} or inside it")
        return v

    @model_serializer(mode="wrap")
    def _wire_form(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The docker run options, scheduling and file fields a request does not use are left out, so
        # such a request is stored byte for byte as before them and older workers still take it.
        return drop_default_file_fields(compact_scheduling(compact_payload(handler(self))))

    @property
    def stdin_bytes(self) -> bytes | None:
        """The input for the container's stdin (``stdin_base64`` decoded), or None: no stdin."""
        return None if self.stdin_base64 is None else base64.b64decode(self.stdin_base64)

    @model_validator(mode="after")
    def _storable(self) -> ExecutionRequest:
        check_storable(self)  # every string, whichever field: UTF-8 or refused, naming the field
        return self


class ExecutionStatus(str, enum.Enum):
    """How an execution ended. Exactly one per accepted execution."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    ERROR = "error"
    LOST = "lost"


class ExecutionState(str, enum.Enum):
    """Every state an execution passes through, as published on the events topic:
    the four before the end, then every ``ExecutionStatus`` (same names, same values).

    The final members are copied from ``ExecutionStatus`` with the enum module's
    documented ``_ignore_`` pattern, so a new status cannot be forgotten here.
    """

    _ignore_ = "namespace status"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    PULLING = "pulling"
    RUNNING = "running"
    namespace = vars()
    for status in ExecutionStatus:
        namespace[status.name] = status.value

    @property
    def final(self) -> bool:
        return self.value in _FINAL


_FINAL = {s.value for s in ExecutionStatus}


class ExecutionResult(BaseModel):
    """What an execution produced. A non-zero exit is a result, not an executor error."""

    model_config = ConfigDict(extra="ignore")

    execution_id: str
    status: ExecutionStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # True when the main process was killed by the kernel's OOM killer (it ended by SIGKILL,
    # exit 137, and the OOM killer acted in the container); the status is then "failed".
    oom_killed: bool = False
    # How many times the OOM killer acted inside the container (the daemon's "oom" events;
    # at least 1 when oom_killed). A child killed while the main process lives on counts
    # here without changing the status: the status follows the main process.
    oom_kills: int = 0
    error_code: str | None = None
    error_msg: str | None = None
    container_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # What ran: the image's registry digest (the manifest digest ``repo@sha256:...`` pins;
    # for an image never pulled or pushed, its local id) and its local id (``sha256:...``).
    image_digest: str | None = None
    image_id: str | None = None
    # Seconds spent pulling the image for this execution (also a pull that failed); None: no pull.
    pull_seconds: float | None = None
    # Seconds from enqueue until a worker took it (set by the worker; None outside rq).
    queued_seconds: float | None = None
    # Output files (request.outputs): what the archive P:exec:ID:outputs holds, the paths
    # that did not exist, whether anything was left out for the limit, the archive's size.
    output_files: list[OutputFile] = Field(default_factory=list)
    outputs_missing: list[str] = Field(default_factory=list)
    outputs_truncated: bool = False
    # Why (when outputs_truncated): "entries" (MAX_OUTPUT_ENTRIES, 10 000, reached), "bytes"
    # (output_files_limit_bytes reached), "error" (collecting failed: nothing kept). Empty from
    # workers before this field; in the order they happened, each once.
    outputs_truncated_by: list[Literal["entries", "bytes", "error"]] = Field(default_factory=list)
    outputs_archive_bytes: int | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class LogStreamRequest(_Model):
    execution_id: ExecutionId
    tail: bool = True
    follow: bool = False


class LogEntry(BaseModel):
    """One chunk of output (normally one line, newline kept) from one stream."""

    model_config = ConfigDict(frozen=True)

    stream: Literal["stdout", "stderr"]
    ts: float
    data: str
