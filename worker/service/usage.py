"""``dockrq-worker``'s usage errors the way ``dockrq``'s are reported (``producer.usage``):
one line on stderr naming the argument or option, exit 125 (docker's "the command itself
failed"), instead of click's usage text and exit 2. ``dockrq-worker`` has no ``--json``."""

from __future__ import annotations

from typing import Any

import click

from producer.usage import DockerUsageErrors, DockrqGroup

PROG = "dockrq-worker"


class WorkerCommand(DockerUsageErrors, click.Command):
    """A ``dockrq-worker`` subcommand (``run``, ``metrics``, ``cleanup``, ``doctor``)."""

    usage_prog = PROG
    usage_json = False


class WorkerGroup(DockrqGroup):
    """The ``dockrq-worker`` group: its own options, unknown commands, and usage errors a
    command raises once running (``click.UsageError``), all exit 125 in one line."""

    usage_prog = PROG
    usage_json = False
    command_class = WorkerCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise self.usage_failure(exc, ctx, []) from None
