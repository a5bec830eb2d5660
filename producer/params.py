"""Argument types of ``dockrq``'s commands: a value of the wrong form is a usage error.

click converts every argument while it parses the command line, so a value
refused here is a ``click.BadParameter``, which ``producer.usage`` turns into
docker's usage exit code (125) and one line naming the argument, before
anything talks to Redis. What only Redis can answer (an id of the right form
that nobody submitted) stays a runtime error (``no such execution``, exit 1).
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

from schemas.defaults import EXECUTION_ID_PATTERN
from schemas.text import quoted_name

from .groups import GROUP_PATTERN

_ID_RE = re.compile(EXECUTION_ID_PATTERN)
_GROUP_RE = re.compile(GROUP_PATTERN)


def _shown(value: str) -> str:
    return quoted_name(value[:80]) + ("..." if len(value) > 80 else "")


class ExecutionIdType(click.ParamType):
    """An execution id (``[A-Za-z0-9_-]{1,64}``, ``schemas.EXECUTION_ID_PATTERN``)."""

    name = "ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not _ID_RE.match(value):
            self.fail(f"{_shown(str(value))} is not an execution id ([A-Za-z0-9_-], 1 to 64 characters)", param, ctx)
        return value


class GroupNameType(click.ParamType):
    """A group name (``[A-Za-z0-9_.-]{1,128}``, ``producer.groups.GROUP_PATTERN``)."""

    name = "NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not _GROUP_RE.match(value):
            self.fail(f"{_shown(str(value))} is not a group name ([A-Za-z0-9_.-], 1 to 128 characters)", param, ctx)
        return value


class CopySourceType(click.ParamType):
    """``dockrq cp``'s ``ID:CONTAINER_PATH``: an execution id and a path in one of docker cp's
    forms (``producer.cp_paths``); ``(id, path)``, the path normalised but for a trailing ``/``
    (a directory asserted), which ``Producer.copy_out`` checks."""

    name = "ID:CONTAINER_PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        execution_id, sep, path = str(value).partition(":")
        if not sep or not execution_id or not path:
            self.fail(f"{_shown(str(value))} is not ID:CONTAINER_PATH", param, ctx)
        execution_id = ExecutionIdType().convert(execution_id, param, ctx)
        from .cp_paths import cp_source  # the models' limits: not needed for --help (producer.cli)

        try:  # docker cp's forms: relative to '/', a trailing '/' for a directory (producer/cp_paths.py)
            clean, asserts_dir = cp_source(path)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return execution_id, clean + "/" if asserts_dir and clean != "/" else clean


class Seconds(click.FloatRange):
    """A number of seconds, at least ``min``: click's FloatRange, also refusing ``nan`` and
    ``inf`` (which a range check lets through, and which would wait forever)."""

    name = "SECONDS"

    def __init__(self, min: float = 0.0) -> None:  # noqa: A002 - click's own name
        super().__init__(min=min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


EXECUTION_ID = ExecutionIdType()
GROUP_NAME = GroupNameType()
COPY_SOURCE = CopySourceType()
