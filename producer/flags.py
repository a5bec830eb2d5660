"""From ``dockrq submit``'s docker-like flags to an execution request (a plain dict).

``-e K=V``/``-e K``, ``-v SRC:DST[:ro|rw]`` and ``--gpus all|N|device=0,1`` are read
the way ``docker run`` reads them; a malformed one raises ``InvalidRequest`` naming
the request field, before anything is sent.

The scheduler's options, ``--retries N --retry-on failed,error --retry-backoff 5,30``
and ``--concurrency-key KEY --concurrency-limit N``, become the request fields of
the same names (``retry_on``, ``retry_backoff_seconds``, ``concurrency_key``,
``concurrency_limit``); the schema validates them, so a bad value is refused with
the field's name before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from .errors import InvalidRequest


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    """``-e K=V`` sets K; ``-e K`` passes K from this environment (skipped if unset), as docker does."""
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _mounts(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """``-v SRC:DST[:ro|rw]`` as docker writes it; read-only unless ``:rw`` (the schema's default)."""
    mounts = []
    for index, item in enumerate(values):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InvalidRequest(f"mounts.{index}: {item!r} is not SRC:DST, SRC:DST:ro or SRC:DST:rw")
        mounts.append({"source": parts[0], "target": parts[1], "read_only": parts[2:] != ["rw"]})
    return mounts


def _gpus(value: str, vendor: str) -> dict[str, Any]:
    """``--gpus`` as docker takes it: ``all``, a count, or ``device=0,1``.

    A count is NVIDIA's only: AMD/Intel GPUs are render nodes the worker cannot pick N of,
    so the schema refuses one; saying so here names the flags to use instead.
    """
    if value == "all":
        return {"vendor": vendor, "count": -1}
    if value.startswith("device="):
        return {"vendor": vendor, "device_ids": [d for d in value[len("device="):].split(",") if d]}
    if value.isascii() and value.isdigit():  # str.isdigit also takes '²', which int() refuses
        if vendor != "nvidia":
            raise InvalidRequest(
                f"resources.gpus: {vendor} GPUs are chosen by render node index, not by count: "
                f"use --gpus device=0,1 or --gpus all"
            )
        return {"vendor": vendor, "count": int(value)}
    raise InvalidRequest(f"resources.gpus: {value!r} is not 'all', a count or 'device=ID,...'")


def build_request(image: str, cmd: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """The request as a plain dict holding only what was given, so the schema's defaults apply."""
    engine: dict[str, Any] = {"image": image, "env": _env_pairs(options["env"])}
    if cmd:
        engine["cmd"] = list(cmd)
    if options["entrypoint"] is not None:
        engine["entrypoint"] = [options["entrypoint"]] if options["entrypoint"] else []
    if options["workdir"]:
        engine["working_dir"] = options["workdir"]
    resources = {k: options[k] for k in ("cpus", "memory", "pids") if options[k] is not None}
    if options["gpus"] is not None:
        resources["gpus"] = _gpus(options["gpus"], options["gpu_vendor"])
    request: dict[str, Any] = {"engine": engine, "resources": resources}
    if options["volume"]:
        request["mounts"] = _mounts(options["volume"])
    plain = {
        "execution_id": "execution_id",
        "timeout": "timeout_seconds",
        "network": "network",
        "pull": "pull_policy",
    }
    request.update({field: options[opt] for opt, field in plain.items() if options[opt] is not None})
    request.update(scheduling_fields(options))  # --retries, --retry-on, --retry-backoff, --concurrency-*
    if options["output_limit"] is not None:
        from schemas import parse_size  # the models' module: not needed for --help (producer.cli)

        try:
            request["output_limit_bytes"] = parse_size(options["output_limit"])
        except ValueError as exc:
            raise InvalidRequest(f"output_limit_bytes: {exc}") from None
    return request


# -- retries and concurrency limits ------------------------------------------------------

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
    click.option("--at-front", is_flag=True, help="Put the execution at the head of its queue."),
    click.option("--depends-on", multiple=True, metavar="ID",
                 help="Start only after execution ID has succeeded (else end cancelled: dependency_failed). Repeatable."),
)


def scheduling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the retry, concurrency, --at-front and --depends-on options to a click command
    (the last two are ``submit()`` arguments, not request fields)."""
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
