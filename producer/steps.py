"""Running sans-I/O "steps" generators on a sync (redis-py) or an asyncio (redis.asyncio) client.

A steps generator holds an algorithm without its I/O. It yields *requests*
(what it needs done: a Redis command, a pipeline, a pause...), each answered by
sending back what the driver's ``do(request)`` returned; it may also yield
*outputs* for the caller (``emits(item)`` is true: passed on, answered with
None); it returns its result. ``producer.log_steps`` (the log readers) and
``producer.many`` (the many-waiters) are written this way, so that the sync
drivers (``producer.logs``, ``producer.many``) and the asyncio ones
(``producer.aio_logs``, ``producer.aio``) share one algorithm and differ only in
how a request is carried out. Exceptions raised inside the steps reach the
caller; those raised by ``do`` leave the steps suspended (they hold no
resources) and reach the caller too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Steps = Generator[Any, Any, R]


def _never(item: Any) -> bool:
    return False


def drive(steps: Steps[R], do: Callable[[Any], Any], emits: Callable[[Any], bool] = _never) -> Generator[Any, None, R]:
    """Run ``steps`` to the end, ``do`` carrying out each request; yields the outputs as they come
    and returns the steps' result."""
    reply: Any = None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration as stop:
            return stop.value
        if emits(item):
            reply = None
            yield item
        else:
            reply = do(item)


def collect(steps: Steps[R], do: Callable[[Any], Any], emits: Callable[[Any], bool] = _never) -> tuple[list[Any], R]:
    """``drive`` to the end: (every output, the steps' result)."""
    run = drive(steps, do, emits)
    outputs: list[Any] = []
    while True:
        try:
            outputs.append(next(run))
        except StopIteration as stop:
            return outputs, stop.value


def run(steps: Steps[R], do: Callable[[Any], Any]) -> R:
    """The result of ``steps`` that yield requests only, ``do`` carrying each out."""
    return collect(steps, do)[1]


async def adrive(
    steps: Steps[R], do: Callable[[Any], Awaitable[Any]], emits: Callable[[Any], bool] = _never,
    done: Callable[[R], object] | None = None,
) -> AsyncIterator[Any]:
    """``drive`` on asyncio (``await do(request)``): yields the outputs as they come; the steps'
    result goes to ``done`` (an async generator returns nothing)."""
    reply: Any = None
    while True:
        try:
            item = steps.send(reply)
        except StopIteration as stop:
            if done is not None:
                done(stop.value)
            return
        if emits(item):
            reply = None
            yield item
        else:
            reply = await do(item)


async def acollect(
    steps: Steps[R], do: Callable[[Any], Awaitable[Any]], emits: Callable[[Any], bool] = _never
) -> tuple[list[Any], R]:
    """``collect`` on asyncio: (every output, the steps' result)."""
    outputs: list[Any] = []
    result: list[R] = []
    async for item in adrive(steps, do, emits, result.append):
        outputs.append(item)
    return outputs, result[0]


async def arun(steps: Steps[R], do: Callable[[Any], Awaitable[Any]]) -> R:
    """``run`` on asyncio."""
    return (await acollect(steps, do))[1]
