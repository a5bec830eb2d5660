"""Reading Redis URLs, including Redis Sentinel: ``redis+sentinel://`` (the form rq-dashboard reads).

    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE_NAME[/DB][?option=value...]

The hosts are the Sentinels (port 26379 when left out); ``SERVICE_NAME`` is the
master group they monitor (``sentinel monitor SERVICE_NAME ...``); ``DB`` the
database number (0). The user and password are the Redis master's (ACL user /
``requirepass``). Options: ``sentinel_username`` and ``sentinel_password``
(when the Sentinels themselves require auth), ``socket_timeout`` and
``socket_connect_timeout`` (seconds, for the master's connections).

This is the same URL rq-dashboard parses (through its Redis-Sentinel-Url
dependency: ``redis_sentinel_url.parse_sentinel_url``), which reads the
password but not the user.

Parsing only: ``schemas.connections.client_from_url`` is the one place a client is
built from any of these URLs (Sentinel ones through redis-py's
``redis.sentinel.Sentinel(...).master_for(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    options: dict[str, float] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """What names the data this URL reaches, without the Sentinels (which may be listed in any order)."""
        return f"{SENTINEL_SCHEME}:{self.service}/{self.db}"


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` URL (any case, surrounding blanks ignored)."""
    return url.strip().lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL. Raises ValueError saying what is wrong (never echoing the password)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    auth, _, hostspec = parts.netloc.rpartition("@")
    username = password = None
    if auth:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = []
    for spec in hostspec.split(","):
        spec = spec.strip()
        if not spec:
            raise ValueError(f"{SENTINEL_SCHEME} URL: empty Sentinel host in the host list")
        host, colon, port = spec.rpartition(":") if not spec.endswith("]") else (spec, "", "")
        if not colon:
            host, port = spec, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{SENTINEL_SCHEME} URL: bad Sentinel address {spec!r} (host:port)")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL: the service name is missing (redis+sentinel://host:port/SERVICE_NAME[/DB])")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{SENTINEL_SCHEME} URL: the path must be /SERVICE_NAME or /SERVICE_NAME/DB, not {parts.path!r}")
    options: dict[str, float] = {}
    extra: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) > 1:
            raise ValueError(f"{SENTINEL_SCHEME} URL: option {name} given twice")
        if name in _FLOAT_OPTIONS:
            try:
                options[name] = float(values[0])
            except ValueError:
                raise ValueError(f"{SENTINEL_SCHEME} URL: option {name} must be a number of seconds") from None
        elif name in _SENTINEL_OPTIONS:
            extra[name] = values[0]
        else:
            known = ", ".join((*_FLOAT_OPTIONS, *_SENTINEL_OPTIONS))
            raise ValueError(f"{SENTINEL_SCHEME} URL: unknown option {name!r} (known: {known})")
    return SentinelUrl(
        hosts=tuple(hosts),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=extra.get("sentinel_username") or None,
        sentinel_password=extra.get("sentinel_password") or None,
        options=options,
    )


def redis_location(url: str) -> str:
    """Where ``url``'s data lives, without credentials or options: ``host:port/db``, the unix
    socket path, or the Sentinel service and db. Used to derive a default deployment id."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).location
    parts = urlsplit(url.strip())
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        return f"unix:{parts.path}/{(query.get('db') or ['0'])[0]}"
    db = parts.path.strip("/") or (query.get("db") or ["0"])[0]
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or 'localhost'}:{port}/{db}"


def check_db(url: str) -> None:
    """Refuse a ``redis://``/``rediss://`` URL whose database is not a number.

    redis-py's ``parse_url`` drops a path it cannot read as an integer
    (``redis://host:6379/abc`` is database 0), joins the parts of a longer one
    (``/1/2`` is 12) and takes ``/-1``; the server would then be asked for another
    database than the one meant, or refuse it only at the first command. The database
    is ``/N`` (or ``?db=N``), N a whole number >= 0. Raises ValueError naming it.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("redis", "rediss", "unix"):
        return
    values = parse_qs(parts.query).get("db", [])
    if parts.scheme.lower() != "unix" and parts.path.strip("/"):
        values = [unquote(parts.path[1:] if parts.path.startswith("/") else parts.path), *values]
    for value in values:
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"the database must be a number >= 0 (/N or ?db=N), not {value[:40]!r}")


def parse_redis_url(url: str) -> None:
    """Check that ``url`` can be read: a ``redis+sentinel://`` URL here, any other through
    redis-py's own parser and :func:`check_db`. Raises ValueError saying what is wrong."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
    else:
        from redis.connection import parse_url

        check_db(url)
        parse_url(url)
