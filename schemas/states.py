"""The states of an execution (``ExecutionState``) and how it ended (``ExecutionStatus``).

Plain enums, no pydantic: the ``dockrq`` CLI offers them as choices (``ls --status``) and
maps them to exit codes without loading the models (README, "Start-up").
``schemas.execution`` and ``schemas`` re-export both.
"""

from __future__ import annotations

import enum


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
