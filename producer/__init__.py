"""The producer side of dockrq: submit executions to rq, wait for their outcome,
follow their logs, cancel them. Depends on ``schemas`` only, never on ``worker``."""

from .client import DEFAULT_REDIS_URL, CancelResult, Producer, parse_request
from .describe import describe
from .errors import (
    CopyRefused,
    DuplicateExecution,
    ExecutionAlreadyFinished,
    ExecutionNotFound,
    ExecutionVanished,
    InvalidRequest,
    NotReplicated,
    ProducerError,
    RequestTooLarge,
)
from .aio import AsyncProducer
from .extract import ArchiveRefused, ExtractReport
from .files import FollowLink, InputsTooLarge, OutputsUnavailable
from .many import WaitTimeout
from .status import ExecutionStatusView

__all__ = [
    "ArchiveRefused",
    "AsyncProducer",
    "CopyRefused",
    "ExtractReport",
    "FollowLink",
    "InputsTooLarge",
    "OutputsUnavailable",
    "DEFAULT_REDIS_URL",
    "CancelResult",
    "DuplicateExecution",
    "ExecutionAlreadyFinished",
    "ExecutionNotFound",
    "ExecutionStatusView",
    "ExecutionVanished",
    "InvalidRequest",
    "NotReplicated",
    "Producer",
    "ProducerError",
    "RequestTooLarge",
    "WaitTimeout",
    "describe",
    "parse_request",
]
