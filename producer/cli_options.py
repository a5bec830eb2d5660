"""``dockrq submit`` options for schedulers: retries on failure and concurrency limits.

``--retries N --retry-on failed,error --retry-backoff 5,30`` and
``--concurrency-key KEY --concurrency-limit N`` become the request fields of the
same names (``retry_on``, ``retry_backoff_seconds``, ``concurrency_key``,
``concurrency_limit``); the schema validates them, so a bad value is refused with
the field's name before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .errors import InvalidRequest

_OPTIONS = (
    click.option("--retries", type=int,
                 help="Attempts allowed after the first, when an attempt ends as --retry-on says (default: lost)."),
    click.option("--retry-on", metavar="STATUS[,STATUS...]",
                 help="Statuses that use up a retry: failed, timed_out, error, lost (default lost)."),
    click.option("--retry-backoff", metavar="S[,S...]",
                 help="Seconds before each retry: one number, or one per retry (the last repeats)."),
    click.option("--concurrency-key", metavar="KEY",
                 help="At most --concurrency-limit executions with this key run at once, fleet-wide."),
    click.option("--concurrency-limit", type=int, metavar="N", help="The limit for --concurrency-key."),
)


def scheduling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the retry and concurrency options to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def scheduling_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The request fields the options gave (only those given, so the schema's defaults apply)."""
    fields: dict[str, Any] = {}
    if options.get("retries") is not None:
        fields["retries"] = options["retries"]
    if options.get("retry_on") is not None:
        fields["retry_on"] = [s.strip() for s in options["retry_on"].split(",") if s.strip()]
    if options.get("retry_backoff") is not None:
        fields["retry_backoff_seconds"] = _backoff(options["retry_backoff"])
    for name in ("concurrency_key", "concurrency_limit"):
        if options.get(name) is not None:
            fields[name] = options[name]
    return fields


def _backoff(text: str) -> int | list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidRequest(f"retry_backoff_seconds: {text!r} is not whole seconds, or a comma list of them") from None
    return values[0] if len(values) == 1 else values
