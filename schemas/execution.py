"""What one execution is: the request a producer sends and the result it gets back.

These models are the public contract shared by the producer, the worker and any
scheduler written in another language, so field names never change silently and
every request is validated here, before anything reaches Docker or Redis.
Unknown fields are refused rather than ignored: a misspelt ``timout_seconds``
must not quietly run a job without a time limit.
"""

from __future__ import annotations

import base64
import math
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
    ValidationInfo,
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
    OutputSkipped,
    drop_default_file_fields,
    overlapping,
)
from .container import (
    TmpfsMount,
    Ulimit,
    check_labels,
    check_stdin,
    check_tmpfs,
    check_ulimits,
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
from .defaults import EXECUTION_ID_PATTERN
from .states import ExecutionState, ExecutionStatus
from .engine import EngineSpec, GpuRequest, Resources, format_size, parse_size
from .placement import Mount, check_inputs_placement, check_outputs_placement
from .text import check_storable

# EngineSpec, GpuRequest, Resources and the sizes live in schemas/engine.py, Mount and the
# check of where files land in schemas/placement.py; they stay importable from here.
__all__ = [
    "DEFAULT_OUTPUT_LIMIT", "EXECUTION_ID_PATTERN", "MAX_OUTPUT_LIMIT", "EngineSpec", "ExecutionId",
    "ExecutionRequest", "ExecutionResult", "ExecutionState", "ExecutionStatus", "GpuRequest", "LogEntry",
    "LogStreamRequest", "Mount", "Resources", "format_size", "new_execution_id", "parse_size",
]

DEFAULT_OUTPUT_LIMIT = 1024 * 1024  # bytes per stream
MAX_OUTPUT_LIMIT = 1024 * 1024 * 1024

ExecutionId = Annotated[str, StringConstraints(pattern=EXECUTION_ID_PATTERN)]


def new_execution_id() -> str:
    return uuid.uuid4().hex


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


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

    # Where inputs and outputs land against tmpfs, bind mounts and read_only (schemas/placement.py).
    # Those fields come first in the model, so they are in ``info.data`` once valid.
    @field_validator("inputs")
    @classmethod
    def _inputs_placement(cls, v: InputsSpec | None, info: ValidationInfo) -> InputsSpec | None:
        if v is not None and {"tmpfs", "mounts", "read_only"} <= info.data.keys():
            check_inputs_placement(v.paths, info.data["tmpfs"], info.data["mounts"], info.data["read_only"])
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs_placement(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and {"tmpfs", "mounts"} <= info.data.keys():
            check_outputs_placement(v, info.data["tmpfs"], info.data["mounts"])
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


class ExecutionResult(BaseModel):
    """What an execution produced. A non-zero exit is a result, not an executor error."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

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
    # Why (when outputs_truncated): schemas.files.TRUNCATION_REASONS: "entries" (MAX_OUTPUT_ENTRIES,
    # 10 000, reached), "bytes" (output_files_limit_bytes reached), "read_limit" (256 MiB of files
    # over the limit read past: the rest of that path left unread), "unsupported" (a path over 4096
    # bytes or not plain), "special" (a device, fifo or socket), "error" (collecting failed: nothing
    # kept). Empty from workers before this field; in the order they happened, each once. Strings,
    # so a reason added later does not break a reader.
    outputs_truncated_by: list[str] = Field(default_factory=list)
    # Entries left out for what they are ("special", "unsupported"), the first 100.
    outputs_skipped: list[OutputSkipped] = Field(default_factory=list)
    outputs_archive_bytes: int | None = None
    # The output files limit the worker applied (the request's output_files_limit_bytes, or the
    # worker's DOCKRQ_MAX_OUTPUT_FILES_BYTES when lower: then output_files_limit_capped). None:
    # no outputs, or a worker from before these fields.
    output_files_limit_bytes: int | None = None
    output_files_limit_capped: bool = False

    @model_serializer(mode="wrap")
    def _drop_unused_output_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An execution without output files leaves the output fields out of its JSON (readers
        take their defaults, as for outcomes written before the fields existed): about 130
        bytes of every retained outcome (BENCHMARKS.md, "Check after session 5's changes")."""
        data = handler(self)
        if isinstance(data, dict) and all(data.get(name, default) == default for name, default in _OUTPUT_DEFAULTS):
            for name, _ in _OUTPUT_DEFAULTS:
                data.pop(name, None)
        return data

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


# The output-file fields of ExecutionResult and their defaults: all at default means no outputs.
_OUTPUT_DEFAULTS = tuple(
    (name, field.get_default(call_default_factory=True))
    for name, field in ExecutionResult.model_fields.items()
    if name.startswith("output")
)


class LogStreamRequest(_Model):
    execution_id: ExecutionId
    tail: bool = True
    follow: bool = False


class LogEntry(BaseModel):
    """One chunk of output (normally one line, newline kept) from one stream."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    stream: Literal["stdout", "stderr"]
    ts: float
    data: str
