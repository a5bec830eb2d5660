"""Waiting for many executions at once on a fixed number of Redis connections.

``Producer.as_completed`` and ``Producer.wait_many`` (and their asyncio twins in
``producer.aio``) follow any number of executions with two connections: one
subscribed to ``P:events`` (every final state of every execution is published
there right after its outcome is written) and one that reads the outcome keys
(``LINDEX P:exec:ID:outcome 0``, pipelined in chunks).

The events topic only says *when to look*: an outcome is taken from its key,
never from the message. So nothing is missed when a message is lost (pub/sub is
fire and forget) or Redis restarts: every pending outcome key is read again
right after each (re)subscription (subscribe first, then read, so an outcome
written in between is seen one way or the other) and every ``recheck_seconds``.

``FollowState`` holds the logic without I/O, shared by the sync and async
drivers: which ids are still pending, which to read next, the deadline, and
the vanish check (no outcome, no rq job, no claim: ``ExecutionNotFound``, as
``Producer.wait``). ``follow_steps`` (the loop) and ``outcome_reads`` (the
pipelined reads) are generators of what to do next, so each driver only
carries the requests out: ``follow`` here on redis-py, ``AsyncProducer.as_completed``
on redis.asyncio.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from schemas import EXECUTION_ID_PATTERN, ExecutionStatus, Keys, Outcome
from schemas.connections import ride_out_outage
from schemas.outages_noticed import noticing_outages

from .errors import ExecutionNotFound, ExecutionVanished
from .presence import presence_commands
from .reaching import DEFAULT_REDIS_RETRY_SECONDS, UntilAnswered
from .steps import drive, run

if TYPE_CHECKING:
    from redis.client import PubSub

log = logging.getLogger(__name__)

DEFAULT_RECHECK_SECONDS = 5.0  # every pending outcome key is read again at least this often
CHUNK = 500  # ids per pipelined read
SLICE_SECONDS = 1.0  # longest single block on the subscription
VANISH_GRACE_SECONDS = 3.0  # as Producer.wait: claim-then-enqueue takes milliseconds
_FINAL = frozenset(s.value for s in ExecutionStatus)
_SHOWN_IDS = 20


class WaitTimeout(TimeoutError):
    """``timeout`` seconds passed before every execution ended.

    ``pending`` lists the ids that have not ended (in the order given);
    ``outcomes`` holds the outcomes of those that had (``wait_many``; empty for
    ``as_completed``, which has yielded them already).
    """

    def __init__(self, pending: list[str], timeout: float | None, outcomes: dict[str, Outcome] | None = None) -> None:
        self.pending = list(pending)
        self.outcomes = dict(outcomes or {})
        shown = ", ".join(self.pending[:_SHOWN_IDS])
        more = f" and {len(self.pending) - _SHOWN_IDS} more" if len(self.pending) > _SHOWN_IDS else ""
        super().__init__(f"{len(self.pending)} execution(s) not ended after {timeout:g}s: {shown}{more}")


def unique_ids(ids: Iterable[str]) -> list[str]:
    """The ids in order, each once; ExecutionNotFound for anything that cannot be an execution id."""
    import re

    pattern = re.compile(EXECUTION_ID_PATTERN)
    out = list(dict.fromkeys(ids))
    for execution_id in out:
        if not isinstance(execution_id, str) or not pattern.match(execution_id):
            raise ExecutionNotFound(str(execution_id), "not an execution id")
    return out


@dataclass
class FollowState:
    """What a many-waiter knows, without I/O. Times are ``time.monotonic()`` seconds."""

    ids: list[str]
    timeout: float | None
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    started: float = field(default_factory=time.monotonic)
    pending: dict[str, None] = field(init=False)
    _hinted: dict[str, None] = field(init=False, default_factory=dict)
    _full_due: bool = field(init=False, default=True)
    _last_full: float = field(init=False, default=0.0)
    _first_full_done: bool = field(init=False, default=False)
    _missing_since: dict[str, float] = field(init=False, default_factory=dict)
    _outage_first: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.pending = dict.fromkeys(self.ids)
        self.deadline = None if self.timeout is None else self.started + self.timeout

    # -- what to do next --------------------------------------------------------

    def remaining(self, now: float) -> float | None:
        """Seconds left (None: no deadline); raises WaitTimeout once it has passed."""
        if self.deadline is None:
            return None
        left = self.deadline - now
        if left <= 0:
            raise WaitTimeout(list(self.pending), self.timeout)
        return left

    def block_for(self, now: float) -> float:
        """How long the next read of the subscription may block."""
        left = self.remaining(now)
        until_recheck = max(0.0, self._last_full + self.recheck_seconds - now)
        block = min(SLICE_SECONDS, until_recheck)
        return max(0.0, block if left is None else min(block, left))

    def resubscribed(self) -> None:
        """A (re)subscription was confirmed: everything pending is read again."""
        self._full_due = True

    def to_read(self, now: float) -> tuple[list[str], bool]:
        """(ids whose outcome key to read now, whether it is a full check that also checks existence)."""
        if self._full_due or now - self._last_full >= self.recheck_seconds:
            self._full_due = False
            self._hinted.clear()
            self._last_full = now
            return list(self.pending), True
        hinted = [i for i in self._hinted if i in self.pending]
        self._hinted.clear()
        return hinted, False

    # -- what came back -----------------------------------------------------------

    def on_message(self, message: dict[str, Any] | None) -> None:
        """A message of the subscription: a final event of a pending id hints at its outcome."""
        if not message:
            return
        kind = message.get("type")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "subscribe":
            self.resubscribed()
            return
        if kind != "message":
            return
        try:
            event = json.loads(message["data"])
            execution_id, status = event["execution_id"], event["status"]
        except (ValueError, KeyError, TypeError):
            return
        if status in _FINAL and execution_id in self.pending:
            self._hinted[execution_id] = None

    def on_outcomes(self, ids: list[str], raws: list[Any], now: float, exists: list[Any] | None = None) -> list[Outcome]:
        """The outcomes read for ``ids`` (raw LINDEX replies; with ``exists``, the EXISTS job/claim counts).

        Returns the new outcomes (removed from pending). Raises ExecutionNotFound for
        ids unknown at the first check, or gone (no job, no claim, no outcome) for
        longer than VANISH_GRACE_SECONDS later on.
        """
        ended: list[Outcome] = []
        unknown: list[str] = []
        for index, (execution_id, raw) in enumerate(zip(ids, raws, strict=True)):
            if execution_id not in self.pending:
                continue
            if raw is not None:
                del self.pending[execution_id]
                self._missing_since.pop(execution_id, None)
                ended.append(Outcome.model_validate_json(raw))
                continue
            if exists is None:
                continue
            if exists[index]:
                self._missing_since.pop(execution_id, None)
            elif not self._first_full_done:
                unknown.append(execution_id)
            elif now - self._missing_since.setdefault(execution_id, now) > VANISH_GRACE_SECONDS:
                raise ExecutionVanished(execution_id)
        if unknown:
            if self._outage_first and len(self.ids) == 1:  # Redis may have come back without it (producer.reaching)
                raise ExecutionVanished(unknown[0], after_outage=True)
            raise ExecutionNotFound(", ".join(unknown))
        return ended

    def outage_met(self) -> None:
        """A read met Redis away: before the first full check, an unknown id may have been lost with Redis's data."""
        if not self._first_full_done:
            self._outage_first = True

    def full_check_done(self) -> None:
        self._first_full_done = True


@dataclass(frozen=True)
class ReadOutcomes:
    """A ``follow_steps`` request: read ``ids``' outcome keys (``full``: and whether their rq job
    or claim exists), riding out outages; answered with ``(raws, exists)`` (``read_outcomes``)."""

    ids: list[str]
    full: bool


LISTEN = "listen"  # a follow_steps request: read the subscription for one slice ((re)subscribing first)


def follow_steps(state: FollowState) -> Generator[Outcome | ReadOutcomes | str, Any, None]:
    """The follow loop without I/O, shared by ``follow`` and ``AsyncProducer.as_completed``: yields
    a ``ReadOutcomes`` (answered with its replies), ``LISTEN`` (answered with None) or an Outcome
    for the caller, until nothing is pending. Raises what ``FollowState`` raises."""
    while state.pending:
        wanted, full = state.to_read(time.monotonic())
        if wanted:
            raws, exists = yield ReadOutcomes(wanted, full)
            yield from state.on_outcomes(wanted, raws, time.monotonic(), exists)
            if full:
                state.full_check_done()
            if not state.pending:
                return
        yield LISTEN


def outcome_reads(keys: Keys, ids: list[str], full: bool) -> Generator[list[tuple[str, tuple[Any, ...]]], list[Any], tuple[list[Any], list[Any] | None]]:
    """The pipelines (``(command, args)`` lists, sent with ``transaction=False``; answered with their
    replies) that read ``ids``' outcome keys in chunks of CHUNK: LINDEX of each outcome key and, with
    ``full``, whether its rq job or its claim exists (producer.presence). Returns ``(raws, exists)`` (``exists`` None unless ``full``)."""
    raws: list[Any] = []
    exists: list[Any] | None = [] if full else None
    for start in range(0, len(ids), CHUNK):
        commands: list[tuple[str, tuple[Any, ...]]] = []
        for execution_id in ids[start : start + CHUNK]:
            commands.append(("lindex", (keys.outcome(execution_id), 0)))
            if full:  # (producer.presence) its rq job, its claim
                commands.extend(presence_commands(keys, execution_id)[1:])
        replies = yield commands
        step = 3 if full else 1
        raws.extend(replies[0::step])
        if exists is not None:
            exists.extend(job or claim for job, claim in zip(replies[1::step], replies[2::step], strict=True))
    return raws, exists


def read_outcomes(client: redis.Redis, keys: Keys, ids: list[str], full: bool) -> tuple[list[Any], list[Any] | None]:
    """``outcome_reads`` on redis-py: ``(raws, exists)``."""
    return run(outcome_reads(keys, ids, full), lambda commands: pipelined(client, commands))


def pipelined(client: redis.Redis, commands: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """The replies of ``commands`` (``(command, args)``) sent in one pipeline (``transaction=False``)."""
    with client.pipeline(transaction=False) as pipe:
        for name, args in commands:
            getattr(pipe, name)(*args)
        return pipe.execute()


def is_outcome(item: object) -> bool:
    """Whether a ``follow_steps`` yield is an Outcome for the caller (else a request)."""
    return isinstance(item, Outcome)


def follow(
    client: redis.Redis,
    blocking: redis.Redis,
    keys: Keys,
    ids: Iterable[str],
    timeout: float | None = None,
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
    retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
) -> Iterator[Outcome]:
    """Yield each execution's outcome once, as it ends (see the module doc).

    ``client`` reads outcome keys, ``blocking`` (socket timeout above SLICE_SECONDS)
    holds the one subscription. Raises ExecutionNotFound (unknown ids, listed,
    before anything is yielded; or an id that vanished) and WaitTimeout.
    Redis outages are ridden out with backoff, then everything pending is read again; before
    Redis first answered, for at most ``retry_seconds`` (producer.reaching).
    """
    state = FollowState(unique_ids(ids), timeout, recheck_seconds)
    reach = UntilAnswered(retry_seconds)
    pubsub: PubSub | None = None

    def listen() -> None:
        """(Re)subscribe if needed, then take the subscription's messages for one slice."""
        nonlocal pubsub
        if pubsub is None:
            pubsub = _subscribe(blocking, keys, state)
        state.on_message(pubsub.get_message(timeout=state.block_for(time.monotonic())))
        while (message := pubsub.get_message(timeout=0)) is not None:
            state.on_message(message)

    def away(exc: Exception, failures: int) -> None:
        nonlocal pubsub
        if pubsub is not None:  # a fresh subscription (and with it a full check) once Redis is back
            _close(pubsub)
            pubsub = None
        if failures == 1:  # once per outage
            log.warning("following %d execution(s): Redis unreachable (%s); retrying until it is back", len(state.pending), exc)

    def in_time() -> bool:
        state.remaining(time.monotonic())  # raises WaitTimeout once the deadline has passed
        return reach.keep_trying()

    def do(request: ReadOutcomes | str) -> Any:
        if isinstance(request, ReadOutcomes):
            read: Any = lambda: read_outcomes(client, keys, request.ids, request.full)  # noqa: E731
        else:  # LISTEN
            read = listen
        with noticing_outages() as noticed:
            result = ride_out_outage(read, away, keep_trying=in_time)
        if noticed.seen:
            state.outage_met()
        reach.answered()
        return result

    try:
        yield from drive(follow_steps(state), do, is_outcome)
    finally:
        if pubsub is not None:
            _close(pubsub)


def _subscribe(blocking: redis.Redis, keys: Keys, state: FollowState) -> PubSub:
    """Subscribe to the events topic and wait for Redis to confirm it (then a full check is due)."""
    pubsub = blocking.pubsub()
    try:
        pubsub.subscribe(keys.events)
        deadline = time.monotonic() + SLICE_SECONDS * 5
        while True:
            message = pubsub.get_message(timeout=SLICE_SECONDS)
            state.on_message(message)
            if message is not None and message.get("type") in ("subscribe", b"subscribe"):
                return pubsub
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no subscribe confirmation from Redis")
    except BaseException:
        _close(pubsub)
        raise


def _close(pubsub: PubSub) -> None:
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
        pass


def wait_many(
    client: redis.Redis,
    blocking: redis.Redis,
    keys: Keys,
    ids: Iterable[str],
    timeout: float | None = None,
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
    retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS,
) -> dict[str, Outcome]:
    """Every outcome, as ``{id: Outcome}`` in the order the ids were given.

    Raises WaitTimeout (with ``.pending`` and the ``.outcomes`` already in) or ExecutionNotFound.
    """
    order = unique_ids(ids)
    got: dict[str, Outcome] = {}
    try:
        for outcome in follow(client, blocking, keys, order, timeout, recheck_seconds, retry_seconds):
            got[outcome.execution_id] = outcome
    except WaitTimeout as exc:
        raise WaitTimeout(exc.pending, timeout, {i: got[i] for i in order if i in got}) from None
    return {i: got[i] for i in order}
