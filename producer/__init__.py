"""The producer side of dockrq: submit executions to rq, wait for their outcome,
follow their logs, cancel them. Depends on ``schemas`` only, never on ``worker``."""

from typing import TYPE_CHECKING

from schemas.lazy import lazy_exports

# Where each public name lives. They are imported on first use (PEP 562), so that a process
# needing one small module of the package (a worker's ``producer.usage``) does not pay for
# the whole client (about 0.1 s of every worker start).
_HOME = {
    "DEFAULT_REDIS_URL": ".client", "CancelResult": ".client", "Producer": ".client", "parse_request": ".client",
    "describe": ".describe",
    "CopyRefused": ".errors", "DuplicateExecution": ".errors", "ExecutionAlreadyFinished": ".errors",
    "ExecutionNotFound": ".errors", "ExecutionVanished": ".errors", "InvalidRequest": ".errors",
    "NotReplicated": ".errors", "ProducerError": ".errors", "RequestTooLarge": ".errors",
    "AsyncProducer": ".aio",
    "ArchiveRefused": ".extract", "ExtractReport": ".extract",
    "FollowLink": ".files", "InputsLost": ".files", "InputsTooLarge": ".files", "OutputsUnavailable": ".files",
    "WaitTimeout": ".many",
    "ExecutionStatusView": ".status",
}

if TYPE_CHECKING:
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
    from .files import FollowLink, InputsLost, InputsTooLarge, OutputsUnavailable
    from .many import WaitTimeout
    from .status import ExecutionStatusView


__all__ = [
    "ArchiveRefused",
    "AsyncProducer",
    "CopyRefused",
    "ExtractReport",
    "FollowLink",
    "InputsTooLarge",
    "InputsLost",
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

__getattr__, __dir__ = lazy_exports(globals(), _HOME)
