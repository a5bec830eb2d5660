"""Redis connections: the one place a dockrq component builds a client, and the one
definition of "Redis is away" and of how to wait for it to come back.

Every component (worker, ``dockrq-worker``, ``doctor``, ``Producer``, ``dockrq``,
``scripts/dashboard.sh`` and rq-dashboard itself) makes its client with :func:`client_from_url`,
for ``redis://``, ``rediss://``, ``unix://`` and Redis Sentinel's ``redis+sentinel://`` URLs
(read by ``schemas.redis_url``). A Sentinel client is redis-py's
``Sentinel(...).master_for(service)``: its pool asks the Sentinels for the master on every new
connection and drops connections to a demoted master, so after a failover every component
reconnects to the new master (the first commands fail with :data:`REDIS_DOWN`, ridden out as
a Redis restart is).
The client carries redis-py's own ``Retry`` (``ExponentialWithJitterBackoff``,
retried on :data:`REDIS_DOWN`), handed to the connection pool the way arq's
``connections.py`` does: a dropped connection is reconnected and the command
sent again a few times within a few seconds (about 4 s in all), invisibly to the caller;
a wrong password or an untrusted certificate (:class:`CommandRetry`) is not retried.

Outages longer than that reach the caller as one of :data:`REDIS_DOWN`. Code
that must ride them out waits with :func:`ride_out_outage` (with
backoff) or, where a documented budget bounds the wait
(``DOCKRQ_OUTCOME_RETRY_SECONDS``), with :func:`within_budget` and an
:class:`OutageBudget`: both are redis-py ``Retry`` objects, not hand-written loops.
Under a budget (:func:`commands_within`, which :func:`within_budget` sets) each
command's own retry round is capped by what is left of it, so a budget of 2 s is
2 s, not 2 s plus a 4 s command retry round per write.

redis-py 8 gives every connection a 5 s socket timeout. Blocking reads (BLMOVE,
pub/sub) wait in slices of at most ``BLOCK_SLICE_SECONDS``, on a client whose
socket timeout (``BLOCKING_SOCKET_TIMEOUT``) sits well above that, so it never
times out in the middle of a legitimate wait yet still notices a dead connection.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis._defaults import DEFAULT_RETRY_BASE, DEFAULT_RETRY_CAP, DEFAULT_RETRY_COUNT
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection

from schemas.causes import caused_by
from schemas.redis_url import check_db, is_sentinel_url, parse_sentinel_url

from .defaults import DEFAULT_REDIS_URL
from .outages_noticed import NoticingAsyncRetry, note_outage
from .packing import command_packer

T = TypeVar("T")

#: Redis is away (restarting, failing over, unreachable): what is worth waiting out.
#: Any other ``redis.RedisError`` is an answer (a refusal, a script error) and is not retried.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)

BLOCK_SLICE_SECONDS = 1.0
BLOCKING_SOCKET_TIMEOUT = 30.0
#: Sentinels answer at once or are down: discovery never waits on one of them for long.
SENTINEL_SOCKET_TIMEOUT = 2.0

#: How a waiter (producer, follower, a worker's main thread) backs off while Redis is away:
#: jittered, doubling from ``base``, at most ``cap`` seconds.
RECONNECT_BACKOFF = ExponentialWithJitterBackoff(cap=5.0, base=0.1)
#: How an execution's writes (log batches, eof, outcome) back off: sooner, so logs resume quickly.
WRITE_BACKOFF = ExponentialWithJitterBackoff(cap=2.0, base=0.05)

# Per-pool bookkeeping redis-py adds to connection_kwargs; a new pool makes its own.
_POOL_INTERNALS = frozenset(
    {
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "himport_registry",
        "connection_pool",  # a SentinelConnectionPool's proxy: the twin pool makes its own
    }
)


def refused_not_away(exc: BaseException) -> bool:
    """True for the :data:`REDIS_DOWN` errors that are Redis's (or TLS's) answer, not an outage:
    a wrong user or password (redis-py's ``AuthenticationError``, a ``ConnectionError``) and a
    server certificate the client does not trust (``ssl.SSLCertVerificationError`` under
    redis-py's ``ConnectionError``). Retrying them only gets the same answer later."""
    return isinstance(exc, redis.AuthenticationError) or caused_by(exc, ssl.SSLCertVerificationError)


class CommandRetry(Retry):
    """redis-py's ``Retry``, except that :func:`refused_not_away` errors are raised at once
    (a wrong password or an untrusted certificate is said in well under a second, not after
    the retries meant for a Redis restart), and that under :func:`commands_within` a
    command's retry round (its connect included) ends with the budget in force on this
    thread: its pauses never run past what is left of it (:class:`BudgetBackoff`), no
    new try starts once it is spent, and its first failure starts the budget's clock."""

    def call_with_retry(
        self, do: Callable[[], T], fail: Callable[..., Any], is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        budget = _COMMAND_BUDGET.get()

        def retryable(exc: Exception) -> bool:
            if refused_not_away(exc) or not (is_retryable is None or is_retryable(exc)):
                return False
            note_outage()  # schemas.outages_noticed
            if budget is None:
                return True
            budget.failed()
            return not budget.spent

        if budget is None:
            return super().call_with_retry(do, fail, retryable, with_failure_count)
        capped = Retry(BudgetBackoff(self._backoff, budget), self._retries, supported_errors=self._supported_errors)
        return capped.call_with_retry(do, fail, retryable, with_failure_count)


#: The budget the Redis commands of this thread (or task) spend their own retry rounds from:
#: set by :func:`commands_within`, read by :class:`CommandRetry`.
_COMMAND_BUDGET: ContextVar[OutageBudget | None] = ContextVar("dockrq_command_budget", default=None)


@contextmanager
def commands_within(budget: OutageBudget) -> Iterator[None]:
    """Within the block, every command this thread sends through a :func:`client_from_url`
    client retries (redis-py's ``Retry`` on its connection, :class:`CommandRetry`) only
    within what is left of ``budget``, instead of its own ~4 s round: a sequence of writes
    sharing one budget (an execution's end: log batches, eof, outcome) gives up when the
    budget is spent, not a command retry round later per write. Nests; restores the budget
    in force before on exit."""
    token = _COMMAND_BUDGET.set(budget)
    try:
        yield
    finally:
        _COMMAND_BUDGET.reset(token)


def command_retry() -> Retry:
    """The retry every client's pool gets: redis-py's defaults (10 tries, 10 ms doubling to
    1 s, jittered) on :data:`REDIS_DOWN`, spelled out so it is dockrq's choice, not an accident;
    a :class:`CommandRetry`, so a wrong password or certificate is not retried."""
    return CommandRetry(
        ExponentialWithJitterBackoff(base=DEFAULT_RETRY_BASE, cap=DEFAULT_RETRY_CAP),
        DEFAULT_RETRY_COUNT,
        supported_errors=REDIS_DOWN,
    )


def client_from_url(url: str, **options: Any) -> redis.Redis:
    """A client for a ``redis://``, ``rediss://`` (TLS), ``unix://`` or ``redis+sentinel://``
    URL, with :func:`command_retry` on its connections; ``options`` are ``redis.Redis`` keyword
    arguments (``socket_timeout``, ...), for a Sentinel URL applied to the master's connections.
    Raises ValueError (naming what is wrong, never the password) for a URL that cannot be read."""
    options.setdefault("retry", command_retry())
    options.setdefault("retry_on_error", list(REDIS_DOWN))
    packer = command_packer()  # packing.py: archive chunks are sent uncopied, not through hiredis
    if packer is not None:
        options.setdefault("command_packer", packer)
    if not is_sentinel_url(url):
        check_db(url)  # redis-py reads redis://host/abc as database 0
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
    }
    if parsed.sentinel_username:
        sentinel_options["username"] = parsed.sentinel_username
    if parsed.sentinel_password:
        sentinel_options["password"] = parsed.sentinel_password
    master_options: dict[str, Any] = {**parsed.options, **options, "db": parsed.db}
    if parsed.username:
        master_options["username"] = parsed.username
    if parsed.password is not None:
        master_options["password"] = parsed.password
    sentinel = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(parsed.service, connection_class=ClosingSentinelConnection, **master_options)


class ClosingSentinelConnection(SentinelManagedConnection):
    """redis-py's SentinelManagedConnection, closing on an error in a read as a plain Connection does.

    redis-py 8's ``SentinelManagedConnection.read_response`` defaults ``disconnect_on_error`` to
    False, unlike ``Connection``: a read cut short by an exception (rq's SIGTERM handler raising
    in the middle of its blocking BLMOVE) leaves the connection in the pool with the reply still
    due, and the next command on it (rq's register_death) waits behind that BLMOVE. Seen as a
    worker that does not exit on SIGTERM after a failover.
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("disconnect_on_error", True)
        return super().read_response(*args, **kwargs)


def async_client_from_url(url: str, **options: Any) -> aioredis.Redis:
    """:func:`client_from_url` for ``redis.asyncio`` (``AsyncProducer``): the same URL forms and
    the same :func:`command_retry` policy, as redis-py's asyncio ``Retry``."""
    options.setdefault(
        "retry",
        NoticingAsyncRetry(  # schemas.outages_noticed
            ExponentialWithJitterBackoff(base=DEFAULT_RETRY_BASE, cap=DEFAULT_RETRY_CAP),
            DEFAULT_RETRY_COUNT,
            supported_errors=REDIS_DOWN,
        ),
    )
    options.setdefault("retry_on_error", list(REDIS_DOWN))
    check_db(url)
    return aioredis.Redis.from_url(url, **options)


def clients_from_url(url: str) -> tuple[redis.Redis, redis.Redis]:
    """A normal client and a blocking one (socket timeout ``BLOCKING_SOCKET_TIMEOUT``)."""
    return client_from_url(url), client_from_url(url, socket_timeout=BLOCKING_SOCKET_TIMEOUT)


def blocking_twin(client: redis.Redis) -> redis.Redis:
    """A client on the same server and database as ``client`` whose socket timeout suits blocking reads.

    Works for any client built on a ``ConnectionPool`` (including fakeredis), so a
    caller that hands the producer its own connection keeps its TLS/auth settings; a
    Sentinel client's twin follows the same Sentinels to the current master.
    """
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_INTERNALS}
    kwargs["socket_timeout"] = BLOCKING_SOCKET_TIMEOUT
    if isinstance(pool, SentinelConnectionPool):
        twin_pool: redis.ConnectionPool = type(pool)(
            pool.service_name, pool.sentinel_manager, is_master=pool.is_master,
            connection_class=pool.connection_class, **kwargs,
        )
    else:
        twin_pool = type(pool)(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=twin_pool)


def describe_redis_error(exc: BaseException) -> str:
    """``str(exc)``, but one short line for redis-py's MasterNotFoundError (whose text repeats
    every Sentinel client's full repr)."""
    if isinstance(exc, MasterNotFoundError):
        head = str(exc).split(" : ", 1)[0]
        return f"{head} (no Sentinel listed in the URL is reachable and knows that service)"
    return str(exc)


def redact_url(url: str) -> str:
    """The URL with its password replaced, for error messages and logs."""
    parts = urlsplit(url)
    if is_sentinel_url(url):  # several host:port in the netloc: urlsplit cannot read its port
        auth, at, hosts = parts.netloc.rpartition("@")
        if not at or ":" not in auth:
            return url
        return urlunsplit(parts._replace(netloc=f"{auth.partition(':')[0]}:***@{hosts}"))
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: urlsplit dropped its brackets
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- waiting out an outage -----------------------------------------------------------


def ride_out_outage(
    call: Callable[[], T],
    on_error: Callable[[Exception, int], Any] = lambda exc, failures: None,
    *,
    backoff: AbstractBackoff = RECONNECT_BACKOFF,
    retries: int = -1,
    keep_trying: Callable[[], bool] | None = None,
) -> T:
    """``call()``, retried with ``backoff`` while it raises one of :data:`REDIS_DOWN`
    (``on_error(exc, failures)`` after each failure): forever, or ``retries`` times, or until
    ``keep_trying()`` is false; then the last error is raised. Other errors propagate at once.
    redis-py's ``Retry``."""
    retry = Retry(backoff, retries, supported_errors=REDIS_DOWN)
    retryable = None if keep_trying is None else (lambda _exc: keep_trying())
    return retry.call_with_retry(call, on_error, is_retryable=retryable, with_failure_count=True)


async def ride_out_outage_async(
    call: Callable[[], Awaitable[T]],
    on_error: Callable[[Exception, int], Awaitable[Any]] | None = None,
    *,
    backoff: AbstractBackoff = RECONNECT_BACKOFF,
    retries: int = -1,
    keep_trying: Callable[[], bool] | None = None,
) -> T:
    """:func:`ride_out_outage` for ``redis.asyncio``: ``await call()``, retried with ``backoff``
    while it raises one of :data:`REDIS_DOWN` (``await on_error(exc, failures)`` after each
    failure), forever, ``retries`` times, or until ``keep_trying()`` is false. redis-py's
    asyncio ``Retry``."""

    async def nothing(_exc: Exception, _failures: int) -> None:
        return None

    retry = AsyncRetry(backoff, retries, supported_errors=REDIS_DOWN)
    retryable = None if keep_trying is None else (lambda _exc: keep_trying())
    return await retry.call_with_retry(call, on_error or nothing, is_retryable=retryable, with_failure_count=True)


class OutageBudget:
    """How long writes may keep waiting for Redis, on one clock from the first failure.

    ``seconds`` is the budget (``DOCKRQ_OUTCOME_RETRY_SECONDS`` for an execution's end):
    several writes sharing one budget wait that long in all, not each. Any success
    (:meth:`answered`) restarts the clock.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.down_since: float | None = None

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    def answered(self) -> None:
        self.down_since = None

    def left(self) -> float:
        """Seconds the writes may still wait (the whole budget while Redis answers)."""
        down_since = self.down_since
        return self.seconds - (0.0 if down_since is None else time.monotonic() - down_since)

    @property
    def spent(self) -> bool:
        return self.left() <= 0


class BudgetBackoff(AbstractBackoff):
    """``backoff``'s pauses, never past what is left of ``budget``."""

    def __init__(self, backoff: AbstractBackoff, budget: OutageBudget) -> None:
        self.backoff = backoff
        self.budget = budget

    def reset(self) -> None:
        self.backoff.reset()

    def compute(self, failures: int) -> float:
        return max(0.0, min(self.backoff.compute(failures), self.budget.left()))


def within_budget(
    call: Callable[[], T],
    budget: OutageBudget,
    on_error: Callable[[Exception], Any] = lambda exc: None,
    *,
    backoff: AbstractBackoff,
) -> T:
    """``call()``, retried with ``backoff`` while Redis is away and ``budget`` is not spent;
    raises the last of :data:`REDIS_DOWN` once it is. redis-py's ``Retry`` with
    :class:`BudgetBackoff`, so the last pause ends exactly when the budget does; the commands
    ``call`` sends run under :func:`commands_within` ``budget``, so their own retry rounds
    (redis-py's, about 4 s each) end with it as well."""

    def retryable(_exc: Exception) -> bool:
        budget.failed()
        return not budget.spent

    retry = Retry(BudgetBackoff(backoff, budget), -1, supported_errors=REDIS_DOWN)
    with commands_within(budget):  # each command's own retry round ends with the budget too
        result = retry.call_with_retry(call, on_error, is_retryable=retryable)
    budget.answered()
    return result
