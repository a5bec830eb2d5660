"""``dockrq ls``: recent executions of every queue (or of some), like ``docker ps -a``.

Sources and filtering: producer.listing. ``--queue`` (repeatable) keeps those
queues; a global ``--queue`` typed on the command line filters as well, as it
always did, while ``DOCKRQ_QUEUE`` (the queue ``submit`` uses) does not.
``--status`` keeps executions in those states, ``-q`` prints only their ids.
``--group NAME`` lists the executions of an rq group (``submit_many(..., group=NAME)``)
instead, oldest first.
"""

from __future__ import annotations

import json

from typing import TYPE_CHECKING

import click

from schemas.states import ExecutionState

from .cli import DockrqCommand, Settings, _ago, _console, _span, json_option, pass_settings
from .params import GROUP_NAME

if TYPE_CHECKING:  # rich and the status view: imported when the list is shown (producer.cli)
    from .status import ExecutionStatusView


@click.command(name="ls", cls=DockrqCommand)
@click.option("--queue", "queues", multiple=True, metavar="Q",
              help="Only this queue; repeatable (default: every queue, or the global --queue if given).")
@click.option("--status", "states", multiple=True, type=click.Choice([s.value for s in ExecutionState]),
              help="Only executions in this state; repeatable.")
@click.option("-q", "--quiet", is_flag=True, help="Only the execution ids, one a line (as docker ps -q).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--group", "group_name", type=GROUP_NAME, help="The executions of this group (submit_many(..., group=NAME)), oldest first.")
@json_option
@pass_settings
def list_executions(
    settings: Settings, queues: tuple[str, ...], states: tuple[str, ...], quiet: bool, limit: int,
    group_name: str | None,
) -> None:
    """List recent executions of every queue, newest first (or a group's, oldest first)."""
    producer = settings.producer()
    if not queues and _given_on_command_line("queue"):
        queues = (settings.queue,)  # `dockrq --queue Q ls` keeps filtering as it always did
    if group_name is not None:
        views = [v for v in producer.group(group_name) if not states or v.state.value in states]
    else:
        views = producer.list_recent(limit, list(queues) or producer.queue_names(), states=states or None)
    if quiet:
        ids = [v.execution_id for v in views]
        click.echo(json.dumps(ids) if settings.as_json else "\n".join(ids), nl=bool(ids) or settings.as_json)
        return
    if settings.as_json:
        click.echo("[" + ",".join(v.model_dump_json() for v in views) + "]")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATUS", "IMAGE", "NODE", "WORKER", "QUEUED", "PULL", "RUN", "AGE", "QUEUE"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS"))
    for v in views:
        table.add_row(
            v.execution_id, _state_shown(v), v.image or "-", v.node or "-", v.worker or "-", _span(v.queued_seconds),
            _span(v.pull_seconds), _span(v.run_seconds), _ago(v.enqueued_at), v.queue or "-",
        )
    _console().print(table)


def _given_on_command_line(name: str) -> bool:
    """Whether the global option ``name`` was typed (not taken from its env var or default)."""
    root = click.get_current_context().find_root()
    return root.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def _state_shown(view: ExecutionStatusView) -> str:
    """The state, with what an operator scanning the list asks next (``waitcli.outcome_shown``)."""
    from .waitcli import outcome_shown

    return view.state.value if view.outcome is None else outcome_shown(view.outcome)
