"""The two Redis clients a producer needs, and a URL that is safe to print.

redis-py 8 gives every connection a 5 s socket timeout. The producer's blocking
reads (BLMOVE, pub/sub) wait in slices of at most ``BLOCK_SLICE_SECONDS``, so a
client whose socket timeout sits well above that never times out in the middle
of a legitimate wait, yet still notices a connection that died silently.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis

from schemas.sentinel import client_from_url, is_sentinel_url

BLOCK_SLICE_SECONDS = 1.0
BLOCKING_SOCKET_TIMEOUT = 30.0

# Per-pool bookkeeping redis-py adds to connection_kwargs; a new pool makes its own.
_POOL_INTERNALS = frozenset(
    {
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "himport_registry",
    }
)


def clients_from_url(url: str) -> tuple[redis.Redis, redis.Redis]:
    """A normal client and a blocking one for ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+sentinel://`` URLs (schemas.sentinel)."""
    return client_from_url(url), client_from_url(url, socket_timeout=BLOCKING_SOCKET_TIMEOUT)


def blocking_twin(client: redis.Redis) -> redis.Redis:
    """A client on the same server and database as ``client`` whose socket timeout suits blocking reads.

    Works for any client built on a ``ConnectionPool`` (including fakeredis), so a
    caller that hands the producer its own connection keeps its TLS/auth settings.
    """
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_INTERNALS}
    kwargs["socket_timeout"] = BLOCKING_SOCKET_TIMEOUT
    twin_pool = type(pool)(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=twin_pool)


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
