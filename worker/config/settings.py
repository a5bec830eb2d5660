"""How one worker process is configured: environment first, CLI flags override.

A worker is usually started by a process manager (compose, systemd, k8s) where
environment variables are the natural knob; flags exist for humans. Both end up
in one validated, immutable object so nothing downstream reads ``os.environ``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PREFIX,
    DEFAULT_QUEUE,
    DEFAULT_RETENTION_SECONDS,
    MIN_MAX_REQUEST_BYTES,
    describe_validation_error,
    parse_size,
)

from schemas.replication import DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS
from schemas.redis_url import parse_redis_url
from worker.config.deployment import DEPLOYMENT_PATTERN, default_deployment
from worker.config.policy import POLICY_ENV_VARS, WorkerPolicy

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_LOG_STREAM_MAXLEN = 10_000
DEFAULT_STOP_GRACE_SECONDS = 10.0
DEFAULT_HEARTBEAT_SECONDS = 10.0
DEFAULT_IDLE_HEARTBEAT_SECONDS = 60.0
DEFAULT_REAP_AFTER_SECONDS = 30.0
DEFAULT_REAP_INTERVAL_SECONDS = 10.0
DEFAULT_ORPHAN_GRACE_SECONDS = 60.0
DEFAULT_OUTCOME_RETRY_SECONDS = 600.0
DEFAULT_PULL_TIMEOUT_SECONDS = 300.0

# Environment variable -> settings field. The only place env names are spelled.
ENV_VARS: dict[str, str] = {
    "DOCKRQ_REDIS_URL": "redis_url",
    "DOCKRQ_QUEUES": "queues",
    "DOCKRQ_PREFIX": "prefix",
    "DOCKRQ_RETENTION_SECONDS": "retention_seconds",
    "DOCKRQ_LOG_RETENTION_SECONDS": "log_retention_seconds",
    "DOCKRQ_EXECUTOR_ID": "executor_id",
    "DOCKRQ_STOP_GRACE_SECONDS": "stop_grace_seconds",
    "DOCKRQ_LOG_STREAM_MAXLEN": "log_stream_maxlen",
    "DOCKRQ_MAX_REQUEST_BYTES": "max_request_bytes",
    # Many hosts (worker/config/deployment.py, schemas/replication.py)
    "DOCKRQ_DEPLOYMENT": "deployment",
    "DOCKRQ_REPLICA_ACKS": "replica_acks",
    "DOCKRQ_REPLICA_ACK_TIMEOUT_SECONDS": "replica_ack_timeout_seconds",
    # Faults survived (worker/service/worker.py, worker/faults/)
    "DOCKRQ_HEARTBEAT_SECONDS": "heartbeat_seconds",
    "DOCKRQ_IDLE_HEARTBEAT_SECONDS": "idle_heartbeat_seconds",
    "DOCKRQ_REAP_AFTER_SECONDS": "reap_after_seconds",
    "DOCKRQ_REAP_INTERVAL_SECONDS": "reap_interval_seconds",
    "DOCKRQ_ORPHAN_GRACE_SECONDS": "orphan_grace_seconds",
    "DOCKRQ_OUTCOME_RETRY_SECONDS": "outcome_retry_seconds",
    # Operations: Prometheus metrics (worker/observe/metrics.py, worker/observe/exporter.py) and log lines
    "DOCKRQ_METRICS_PORT": "metrics_port",
    "DOCKRQ_METRICS_ADDR": "metrics_addr",
    "DOCKRQ_QUEUE_METRICS": "queue_metrics",
    "DOCKRQ_LOG_FORMAT": "log_format",
    # Image pulls (worker/executor/pull.py)
    "DOCKRQ_PULL_TIMEOUT_SECONDS": "pull_timeout_seconds",
    # What requests may ask for (worker/config/policy.py): DOCKRQ_MAX_MEMORY, DOCKRQ_ALLOWED_MOUNT_ROOTS, ...
    **{var: f"policy.{field}" for field, var in POLICY_ENV_VARS.items()},
}

# Settings field ("policy." fields by their own name) -> environment variable, for help texts.
SETTING_ENV: dict[str, str] = {field.removeprefix("policy."): var for var, field in ENV_VARS.items()}

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class SettingsError(ValueError):
    """A setting from the environment or the command line is invalid (one readable line)."""


def _split_list(value: Any) -> Any:
    # "a, b,,c" from the environment; lists from Python callers pass through.
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # rediss:// URLs carry a user, a password and CA/cert file paths: far beyond a name's length
    redis_url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4096)] = DEFAULT_REDIS_URL
    queues: tuple[Name, ...] = Field(default=(DEFAULT_QUEUE,), min_length=1, description="priority order")
    prefix: Name = DEFAULT_PREFIX
    retention_seconds: int = Field(default=DEFAULT_RETENTION_SECONDS, ge=1)
    # An execution's log (stream or compact string) is kept this long after its last write; None: retention_seconds.
    log_retention_seconds: int | None = Field(default=None, ge=1)
    executor_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        default_factory=lambda: socket.gethostname()[:64] or "dockrq"
    )
    stop_grace_seconds: float = Field(default=DEFAULT_STOP_GRACE_SECONDS, ge=0, le=3600)
    log_stream_maxlen: int = Field(default=DEFAULT_LOG_STREAM_MAXLEN, ge=1)
    # rq job data larger than this (the request plus its rq framing) is rejected unread (worker/service/job.py).
    max_request_bytes: Annotated[int, BeforeValidator(parse_size)] = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=MIN_MAX_REQUEST_BYTES)
    policy: WorkerPolicy = Field(default_factory=WorkerPolicy)
    # Label dockrq.deployment on every container; None: derived from prefix + Redis location.
    deployment: Annotated[str, StringConstraints(strip_whitespace=True, pattern=DEPLOYMENT_PATTERN)] | None = None
    # Replicas that must confirm (Redis WAIT) an outcome write; 0: none asked (schemas/replication.py).
    replica_acks: int = Field(default=0, ge=0, le=16)
    replica_ack_timeout_seconds: float = Field(default=DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS, gt=0, le=60)
    # A worker refreshes its rq heartbeat this often; one silent for reap_after_seconds is dead,
    # and every worker's reaper (each reap_interval_seconds) adopts or ends its executions.
    heartbeat_seconds: float = Field(default=DEFAULT_HEARTBEAT_SECONDS, ge=0.1, le=300)
    # With no execution of its own and none adopted, a worker heartbeats this often instead:
    # only owners of started jobs are judged by their heartbeat (worker/faults/liveness.py).
    idle_heartbeat_seconds: float = Field(default=DEFAULT_IDLE_HEARTBEAT_SECONDS, ge=0.1, le=300)
    reap_after_seconds: float = Field(default=DEFAULT_REAP_AFTER_SECONDS, ge=0.5, le=3600)
    reap_interval_seconds: float = Field(default=DEFAULT_REAP_INTERVAL_SECONDS, ge=0.1, le=3600)
    # Containers younger than this are never removed as orphans (they may be being created).
    orphan_grace_seconds: float = Field(default=DEFAULT_ORPHAN_GRACE_SECONDS, ge=0, le=86400)
    # An ended execution whose outcome Redis does not take for this long (unreachable) stops
    # waiting; the worker keeps the outcome and writes it once Redis is back (worker/faults/outage.py).
    outcome_retry_seconds: float = Field(default=DEFAULT_OUTCOME_RETRY_SECONDS, ge=0.5, le=86400)
    # Prometheus metrics on http://metrics_addr:metrics_port/metrics (None: not served); with
    # queue_metrics the endpoint also reads the queues' depth from Redis at each scrape.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_addr: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)] = "0.0.0.0"
    queue_metrics: bool = False
    log_format: Literal["text", "json"] = "text"
    # An image pull taking longer ends its execution error/image_pull (a registry that stopped answering).
    pull_timeout_seconds: float = Field(default=DEFAULT_PULL_TIMEOUT_SECONDS, ge=1, le=86400)

    @field_validator("redis_url")
    @classmethod
    def _readable_url(cls, value: str) -> str:
        # Refused here, naming DOCKRQ_REDIS_URL, rather than when the first client is made.
        parse_redis_url(value)
        return value

    @field_validator("queues", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @model_validator(mode="after")
    def _reap_after_heartbeats(self) -> WorkerSettings:
        if self.reap_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"reap_after_seconds ({self.reap_after_seconds:g}) must be at least twice heartbeat_seconds "
                f"({self.heartbeat_seconds:g}): a live worker would be taken for dead"
            )
        return self

    @property
    def deployment_id(self) -> str:
        """``deployment``, or the one derived from the prefix and the Redis location (worker/config/deployment.py)."""
        return self.deployment or default_deployment(self.prefix, self.redis_url)

    @property
    def allowed_mount_roots(self) -> tuple[str, ...]:
        return self.policy.allowed_mount_roots

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Settings from ``environ`` (default ``os.environ``), then ``overrides`` that are not None.

        Raises SettingsError naming the variable or flag that is wrong.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            field: environ[var] for var, field in ENV_VARS.items() if environ.get(var, "").strip() != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        # Policy fields may be given flat (``max_memory="1g"``, as the CLI does) or as "policy.max_memory".
        policy = {k.removeprefix("policy."): values.pop(k) for k in list(values) if k.startswith("policy.")}
        policy.update({k: values.pop(k) for k in list(values) if k in WorkerPolicy.model_fields})
        if policy:
            values["policy"] = policy
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_with_env_names(describe_validation_error(exc))) from None


def _with_env_names(message: str) -> str:
    # Operators set DOCKRQ_* variables, so name those alongside the field.
    for var, field in ENV_VARS.items():
        message = message.replace(f"{field}:", f"{field} ({var}):", 1)
    return message
