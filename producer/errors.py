"""Errors the producer raises for things a caller can act on.

They share one base so a caller (or the CLI) can tell "dockrq said no" from a
bug or a Redis outage with a single ``except ProducerError``. Redis errors are
left as redis-py raises them: callers already know how to handle those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.text import storable_name

if TYPE_CHECKING:  # pydantic: only once a request is validated (README, "Start-up")
    from pydantic import ValidationError


class ProducerError(Exception):
    """Base of every error the producer raises on purpose."""


class InvalidRequest(ProducerError, ValueError):
    """The request does not validate; nothing was enqueued. The message names each bad field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidRequest:
        from schemas import describe_validation_error

        return cls(describe_validation_error(exc))

    @classmethod
    def check_storable(cls, name: str, what: str) -> None:
        """Raise InvalidRequest naming ``what`` when ``name`` cannot be stored in Redis (not
        valid UTF-8, schemas.text)."""
        try:
            storable_name(name, what)
        except ValueError as exc:
            raise cls(str(exc)) from None


class RequestTooLarge(InvalidRequest):
    """The request's JSON is larger than the producer's ``max_request_bytes``; nothing was enqueued.

    A request is copied whole into Redis and into every worker that takes it;
    workers reject what is over their own limit (DOCKRQ_MAX_REQUEST_BYTES) anyway,
    so refusing it here keeps it out of Redis and tells the caller at once.
    """

    def __init__(self, size: int, limit: int, where: str = "request") -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{where}: {size} bytes of JSON, above the limit of {limit} bytes (max_request_bytes)")


class DuplicateExecution(ProducerError):
    """The execution id is already in use (queued, running, or ended within the retention time)."""

    def __init__(self, execution_ids: str | list[str]) -> None:
        ids = [execution_ids] if isinstance(execution_ids, str) else list(execution_ids)
        self.execution_ids = ids
        super().__init__(f"execution id already in use: {', '.join(ids)}")


class ExecutionNotFound(ProducerError, LookupError):
    """No outcome, no rq job and no claim exist for this id (never submitted, expired or deleted)."""

    def __init__(self, execution_id: str, detail: str = "no such execution") -> None:
        self.execution_id = execution_id
        super().__init__(f"{detail}: {execution_id}")


class ExecutionVanished(ExecutionNotFound):
    """The execution was known (a waiter or follower saw it) and Redis no longer knows it: no rq
    job and no outcome, e.g. Redis restarted without persistence, or a failover lost the
    unreplicated writes. A worker still running it writes its outcome when it ends (into the
    Redis that lost it: ``dockrq status`` shows it then); else it gets none: submit it again
    (the same id is free).

    ``after_outage``: the call found neither job nor outcome right after riding out an outage
    it met before Redis first answered (``producer.reaching``): Redis may have come back
    without its data, so an execution it accepted may have been lost with it (or the id was
    never submitted: Redis can no longer tell)."""

    def __init__(self, execution_id: str, *, after_outage: bool = False) -> None:
        self.after_outage = after_outage
        if after_outage:
            detail = (
                "no such execution now, but Redis was unreachable when this call started and may have lost "
                "its data (no rq job, no outcome); a worker still running it may write its outcome later"
            )
        else:
            detail = (
                "execution vanished: Redis no longer knows it (no rq job, no outcome: its data was lost or "
                "expired); a worker still running it may write its outcome later"
            )
        super().__init__(execution_id, detail)


class NotReplicated(ProducerError):
    """``replica_acks``: the submission is on the Redis master but fewer replicas than asked
    confirmed it in time, so a failover now could lose it. ``execution_ids`` were enqueued;
    ``Producer.status``/``wait`` tell later whether they survived."""

    def __init__(self, execution_ids: list[str], message: str) -> None:
        self.execution_ids = list(execution_ids)
        super().__init__(message)


class ExecutionAlreadyFinished(ProducerError):
    """The execution has ended already, so there is nothing left to cancel."""

    def __init__(self, execution_id: str, status: str) -> None:
        self.execution_id = execution_id
        self.status = status
        super().__init__(f"execution {execution_id} already ended: {status}")


class CopyRefused(ProducerError):
    """``Producer.copy_out`` / ``dockrq cp``: ``docker cp``'s destination rules refuse this copy,
    and nothing was written: a directory onto an existing file ("cannot copy a directory to a
    file"), a file onto a path ending in ``/`` that does not exist ("the destination directory
    must exist"), a destination whose parent directory does not exist or is not a directory."""
