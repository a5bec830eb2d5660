"""Click plumbing shared by ``dockrq``'s commands: the global options (``--redis-url``,
``--replica-acks``, ...), the Producer built from them, exit codes, and one-line errors
(the exit-code table is in producer.cli's docstring)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import click

from schemas.defaults import (
    DEFAULT_PREFIX, DEFAULT_QUEUE, DEFAULT_REDIS_RETRY_SECONDS, DEFAULT_REDIS_URL, DEFAULT_RETENTION_SECONDS,
)
from schemas.replication import DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS

from .errors import InvalidRequest, ProducerError
from .params import Seconds
from .usage import EXIT_INTERRUPTED, EXIT_USAGE, DockerUsageErrors, json_error

if TYPE_CHECKING:
    from .client import Producer

EXIT_ERROR = 1
EXIT_REDIS_UNREACHABLE = 69  # sysexits' EX_UNAVAILABLE: wait/logs/status could not reach Redis (producer.reaching)
EXIT_WAIT_TIMEOUT = 75
EXIT_TIMED_OUT = 124
EXIT_DOCKRQ_FAILED = 125
EXIT_CANCELLED = EXIT_INTERRUPTED  # 130: Ctrl-C, a cancelled execution
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


@dataclass
class Settings:
    """Global options, and the producer built from them on first use."""

    redis_url: str
    prefix: str
    queue: str
    retention_seconds: int
    as_json: bool = False
    replica_acks: int = 0
    replica_ack_timeout: float = DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS
    redis_retry_seconds: float = DEFAULT_REDIS_RETRY_SECONDS
    _producer: Producer | None = field(default=None, repr=False)

    def producer(self) -> Producer:
        if self._producer is None:
            acks = (
                {"replica_acks": self.replica_acks, "replica_ack_timeout": self.replica_ack_timeout}
                if self.replica_acks else {}
            )
            if self.redis_retry_seconds != DEFAULT_REDIS_RETRY_SECONDS:
                acks["redis_retry_seconds"] = self.redis_retry_seconds
            from schemas.connections import redact_url

            from . import cli  # its ``Producer`` is the factory: the one name tests replace

            try:
                self._producer = cli.Producer(
                    self.redis_url, queue=self.queue, prefix=self.prefix, retention_seconds=self.retention_seconds, **acks
                )
            except ValueError as exc:  # redis-py / schemas.redis_url cannot read the URL: a bad value (125)
                raise BadOption(f"invalid --redis-url / DOCKRQ_REDIS_URL {redact_url(self.redis_url)}: {exc}") from None
            click.get_current_context().call_on_close(self._producer.close)
        return self._producer


def fail(message: str, code: int, **details: Any) -> NoReturn:
    """End the command with ``code``: ``dockrq: message`` on stderr, or with ``--json`` the
    JSON error on stdout (``details`` added to it, e.g. ``pending`` ids of ``wait``)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and getattr(ctx.find_root().obj, "as_json", False):
        json_error(message, code, **details)
    else:
        click.echo(f"dockrq: {message}", err=True)
    raise click.exceptions.Exit(code)


class BadOption(ProducerError):
    """A global option's value (``--redis-url``...) that can only be checked once it is used:
    a bad command line all the same, exit 125 like click's own usage errors."""


class DockrqCommand(DockerUsageErrors, click.Command):
    """Turns expected failures into one line on stderr and the command's failure exit code;
    a value refused by the producer (InvalidRequest, BadOption) is a usage error of every
    command (125, as ``docker``), whatever the command's own failure code. ``unreachable_code``:
    the exit code when Redis cannot be reached (default: ``failure_code``)."""

    def __init__(self, *args: Any, failure_code: int = EXIT_ERROR, unreachable_code: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure_code = failure_code
        self.unreachable_code = failure_code if unreachable_code is None else unreachable_code

    def invoke(self, ctx: click.Context) -> Any:
        import redis  # here, not at the top: ``dockrq --help`` never talks to Redis (producer.cli)

        from schemas.connections import REDIS_DOWN, describe_redis_error, redact_url

        try:
            return super().invoke(ctx)
        except InvalidRequest as exc:
            fail(f"invalid request: {exc}", EXIT_USAGE)
        except BadOption as exc:
            fail(str(exc), EXIT_USAGE)
        except ProducerError as exc:
            fail(str(exc), self.failure_code)
        except REDIS_DOWN as exc:
            url = redact_url(ctx.find_object(Settings).redis_url)
            fail(f"cannot reach Redis at {url}: {describe_redis_error(exc)}", self.unreachable_code)
        except redis.RedisError as exc:
            fail(f"Redis error: {exc}", self.failure_code)
        except UnicodeError as exc:  # text no check caught (a host name IDNA refuses...): still one line
            fail(f"cannot use this input: {exc}", self.failure_code)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_CANCELLED) from None
        except BrokenPipeError:
            # The reader went away (``dockrq logs ID | head``): stop quietly like
            # shell tools, and keep the interpreter's final flush from failing too.
            with suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Settings).as_json = True


json_option = click.option(
    "--json", is_flag=True, expose_value=False, callback=_set_json, help="Machine-readable JSON output."
)


def global_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``dockrq`` group's options, each with its ``DOCKRQ_*`` environment variable."""
    for option in reversed(_GLOBAL_OPTIONS):
        fn = option(fn)
    return fn


_GLOBAL_OPTIONS = [
    click.option("--redis-url", envvar="DOCKRQ_REDIS_URL", default=DEFAULT_REDIS_URL, show_default=True,
                 help="Redis URL (redis://, rediss:// for TLS, redis+sentinel://host:port,.../SERVICE[/DB]; user and "
                 "password may be in it). Env DOCKRQ_REDIS_URL."),
    click.option("--prefix", envvar="DOCKRQ_PREFIX", default=DEFAULT_PREFIX, show_default=True,
                 help="Key prefix of the wire contract. Env DOCKRQ_PREFIX."),
    click.option("--queue", envvar="DOCKRQ_QUEUE", default=DEFAULT_QUEUE, show_default=True,
                 help="rq queue. Env DOCKRQ_QUEUE."),
    click.option("--retention", "retention_seconds", envvar="DOCKRQ_RETENTION_SECONDS", type=click.IntRange(min=1),
                 default=DEFAULT_RETENTION_SECONDS, show_default=True,
                 help="Seconds outcomes, flags and claims are kept. Env DOCKRQ_RETENTION_SECONDS."),
    click.option("--replica-acks", envvar="DOCKRQ_REPLICA_ACKS", type=click.IntRange(min=0, max=16), default=0,
                 show_default=True, help="Replicas that must confirm a submission and an outcome (Redis WAIT). "
                 "Env DOCKRQ_REPLICA_ACKS."),
    click.option("--replica-ack-timeout", envvar="DOCKRQ_REPLICA_ACK_TIMEOUT_SECONDS", type=Seconds(min=0.001),
                 default=DEFAULT_REPLICA_ACK_TIMEOUT_SECONDS, show_default=True,
                 help="Seconds to wait for those confirmations. Env DOCKRQ_REPLICA_ACK_TIMEOUT_SECONDS."),
    click.option("--redis-retry", "redis_retry_seconds", envvar="DOCKRQ_REDIS_RETRY_SECONDS", type=Seconds(),
                 default=DEFAULT_REDIS_RETRY_SECONDS, show_default=True,
                 help="Seconds wait, logs and status keep retrying a Redis that has not answered them yet "
                 "(restarting, failing over) before saying it cannot be reached (exit 69). Env DOCKRQ_REDIS_RETRY_SECONDS."),
]
