"""The request fields schedulers use: retries on failure and concurrency limits.

``ExecutionRequest`` (schemas/execution.py) carries them; this module holds their
types, bounds and checks, and what "not asked for" means on the wire: a request
that does not use them is stored without them (as the docker run options,
schemas/container.py), so workers that predate them still take it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StringConstraints

MAX_RETRIES = 10
MAX_BACKOFF_SECONDS = 7 * 24 * 3600
MAX_CONCURRENCY_LIMIT = 100_000
CONCURRENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
RetryStatus = Literal["failed", "timed_out", "error", "lost"]
DEFAULT_RETRY_ON: tuple[RetryStatus, ...] = ("lost",)  # what ``retries`` always meant
BackoffSeconds = Annotated[StrictInt, Field(ge=0, le=MAX_BACKOFF_SECONDS)]  # strict: JSON true is no number
ConcurrencyKey = Annotated[str, StringConstraints(pattern=CONCURRENCY_KEY_PATTERN)]

_DEFAULTS: dict[str, Any] = {
    "retry_on": list(DEFAULT_RETRY_ON), "retry_backoff_seconds": 0, "concurrency_key": None, "concurrency_limit": None,
}


def check_backoff(value: int | list[int]) -> int | list[int]:
    """``retry_backoff_seconds``: a number, or a list of 1 to MAX_RETRIES numbers (ValueError otherwise)."""
    if isinstance(value, list) and not 1 <= len(value) <= MAX_RETRIES:
        raise ValueError(f"give a number, or a list of 1 to {MAX_RETRIES} numbers")
    return value


def check_concurrency_pair(key: str | None, limit: int | None) -> None:
    """``concurrency_key`` and ``concurrency_limit`` come together (ValueError otherwise)."""
    if (key is None) != (limit is None):
        raise ValueError("concurrency_key and concurrency_limit go together: give both or neither")


def backoff_before(backoff: int | list[int], attempt: int) -> int:
    """Seconds to wait before ``attempt`` (2 = the first retry), as rq's ``Retry.get_interval``:
    one number for every retry, or the list's entry for this retry, its last repeating."""
    if isinstance(backoff, int):
        return backoff
    return backoff[min(max(attempt - 2, 0), len(backoff) - 1)]


def compact_scheduling(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` (a request's JSON form) without the scheduling fields it does not use."""
    return {k: v for k, v in payload.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}
