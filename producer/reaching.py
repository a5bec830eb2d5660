"""The first reads of ``wait``, ``logs`` and ``status``: Redis away before it first answered.

Once Redis has answered a call, the rest of it rides an outage out as it always did: a wait
until its timeout (``producer.waiting``, ``producer.many``), a log follow until Redis is back
(``producer.logs``). Before that first answer a Redis that is away (restarting, failing over)
cannot be told from a wrong URL or a server gone for good, so the first reads ride the outage
out for at most ``redis_retry_seconds`` (``Producer(redis_retry_seconds=)``,
``DOCKRQ_REDIS_RETRY_SECONDS``, default 30 s; a wait's own ``timeout`` ends it sooner), with
the waiters' backoff (``RECONNECT_BACKOFF``) and their one warning line per outage, then raise
the last of ``REDIS_DOWN`` (``dockrq``: ``cannot reach Redis at URL: ...``, exit 69). The
budget's clock starts at the first failed read, which has already spent the client's own retry
round (``schemas.connections.command_retry``, about 4 s). A wrong password or an untrusted
certificate (``refused_not_away``) is an answer, raised at once.

An id that Redis does not know right after such an outage (one the first reads rode out, or
only the client's own retry round: ``schemas.outages_noticed``) may have been lost with
Redis's data (a restart without persistence, a failover), so its ExecutionNotFound becomes
``ExecutionVanished(after_outage=True)``: "Redis was unreachable when this call started and
may have lost its data", not a plain "no such execution".

Both are redis-py ``Retry`` objects (sync and asyncio) over ``OutageBudget``/``BudgetBackoff``,
the budget the workers' writes use (``schemas.connections``), not hand-written loops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry

from schemas import defaults
from schemas.outages_noticed import Noticed, note_outage, noticing_outages
from schemas.connections import (
    RECONNECT_BACKOFF,
    REDIS_DOWN,
    BudgetBackoff,
    OutageBudget,
    describe_redis_error,
    refused_not_away,
)

from .errors import ExecutionNotFound, ExecutionVanished

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_REDIS_RETRY_SECONDS = defaults.DEFAULT_REDIS_RETRY_SECONDS  # seconds (schemas/defaults.py)


class FirstReads:
    """One call's first reads: ``retryable`` and ``away`` for a redis-py ``Retry``.

    ``seconds``: the budget (0: the client's own retry round only); ``what``: the warning's
    subject (``waiting for ID``); ``keep_trying``: False stops at once (a wait's deadline)."""

    def __init__(self, seconds: float, what: str, keep_trying: Callable[[], bool] | None = None) -> None:
        self.budget = OutageBudget(seconds)
        self.what = what
        self.keep_trying = keep_trying

    def retryable(self, exc: Exception) -> bool:
        self.budget.failed()
        if refused_not_away(exc) or self.budget.spent:
            return False
        note_outage()  # Redis away before it answered (schemas.outages_noticed; a client without dockrq's retry too)
        return self.keep_trying is None or self.keep_trying()

    def away(self, exc: Exception, failures: int) -> None:
        if failures == 1:  # once per outage (redis-py's Retry asks retryable first: it is ridden out)
            log.warning(
                "%s: Redis unreachable (%s); retrying for up to %gs", self.what, describe_redis_error(exc),
                self.budget.seconds,
            )

    def backoff(self) -> BudgetBackoff:
        return BudgetBackoff(RECONNECT_BACKOFF, self.budget)


class UntilAnswered:
    """For a loop that rides outages out with ``ride_out_outage`` until its own deadline
    (``producer.many``'s followers): before Redis first answered, only for ``seconds`` (module
    doc). ``keep_trying()`` goes into the ride; ``answered()`` after each read that succeeded."""

    def __init__(self, seconds: float) -> None:
        self.budget = OutageBudget(seconds)
        self.reached = False

    def keep_trying(self) -> bool:
        if self.reached:
            return True
        note_outage()  # away before the first answer (schemas.outages_noticed)
        self.budget.failed()
        return not self.budget.spent

    def answered(self) -> None:
        self.reached = True


def first_reads(call: Callable[[], T], seconds: float, what: str, *, keep_trying: Callable[[], bool] | None = None) -> T:
    """``call()`` (reads only: it may run again), retried while Redis is away and has not
    answered for less than ``seconds`` (module doc); raises the last of ``REDIS_DOWN`` then."""
    reads = FirstReads(seconds, what, keep_trying)
    retry = Retry(reads.backoff(), -1, supported_errors=REDIS_DOWN)
    with noticing_outages() as noticed:
        try:
            return retry.call_with_retry(call, reads.away, is_retryable=reads.retryable, with_failure_count=True)
        except ExecutionNotFound as exc:
            raise_if_lost(exc, noticed)
            raise


def raise_if_lost(exc: ExecutionNotFound, noticed: Noticed) -> None:
    """``ExecutionVanished(after_outage=True)`` for a plain ExecutionNotFound met after an outage
    (``noticed.seen``: module doc); returns for anything else."""
    if noticed.seen and type(exc) is ExecutionNotFound and ", " not in exc.execution_id:
        raise ExecutionVanished(exc.execution_id, after_outage=True) from None


def first_reads_within(call: Callable[[], object], seconds: float, timeout: float | None, what: str) -> float:
    """:func:`first_reads`, given up also when ``timeout`` (seconds, None: no limit) runs out;
    returns the seconds it took (of ``timeout``, for the rest of the wait)."""
    started = time.monotonic()
    first_reads(call, seconds, what, keep_trying=lambda: timeout is None or time.monotonic() - started < timeout)
    return time.monotonic() - started


async def first_reads_async(
    call: Callable[[], Awaitable[T]], seconds: float, what: str, *, keep_trying: Callable[[], bool] | None = None
) -> T:
    """:func:`first_reads` on ``redis.asyncio`` (``AsyncProducer``): ``await call()``."""
    reads = FirstReads(seconds, what, keep_trying)

    async def away(exc: Exception, failures: int) -> None:
        reads.away(exc, failures)

    retry = AsyncRetry(reads.backoff(), -1, supported_errors=REDIS_DOWN)
    with noticing_outages() as noticed:
        try:
            return await retry.call_with_retry(call, away, is_retryable=reads.retryable, with_failure_count=True)
        except ExecutionNotFound as exc:
            raise_if_lost(exc, noticed)
            raise
