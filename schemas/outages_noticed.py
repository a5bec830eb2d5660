"""Whether a call's Redis commands met an outage, even one their own retry round rode out.

A client's connections retry a command for about 4 s (``schemas.connections.command_retry``),
invisibly to the caller. A caller that must tell "Redis answered at once" from "Redis was
away first and answered later" (``producer.reaching``: an id Redis does not know right after
an outage may have been lost with Redis's data) reads it here: within
:func:`noticing_outages`, every retryable failure of a command this thread (or asyncio task)
sends through a :func:`schemas.connections.client_from_url` or ``async_client_from_url``
client is noted (redis-py's ``Retry.call_with_retry``, through its ``is_retryable`` hook).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio.retry import Retry as AsyncRetry

T = TypeVar("T")


@dataclass
class Noticed:
    """``seen``: a command failed with Redis away (and may have been retried) within the block."""

    seen: bool = False


_NOTICED: ContextVar[Noticed | None] = ContextVar("dockrq_outages_noticed", default=None)


@contextmanager
def noticing_outages() -> Iterator[Noticed]:
    """Within the block, note every outage a command meets (module doc); yields the ``Noticed``."""
    noticed = Noticed()
    token = _NOTICED.set(noticed)
    try:
        yield noticed
    finally:
        _NOTICED.reset(token)


def note_outage() -> None:
    """Called by the connections' retry on each retryable failure (a no-op outside the block)."""
    noticed = _NOTICED.get()
    if noticed is not None:
        noticed.seen = True


class NoticingAsyncRetry(AsyncRetry):
    """redis-py's asyncio ``Retry`` that calls :func:`note_outage` on each failure it retries."""

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[..., Any], is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def retryable(exc: Exception) -> bool:
            if not (is_retryable is None or is_retryable(exc)):
                return False
            note_outage()
            return True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)
