"""Command-line usage errors the way ``docker run`` reports them.

click exits 2 on a usage error (an unknown flag, a missing image, a bad value);
``docker`` exits 125, the code scripts already read as "the tool itself failed,
the container never ran". dockrq's commands exit 125 too, and with ``--json``
the error is one JSON object on stdout (``{"error": message, "exit_code": 125}``)
instead of click's usage text on stderr. ``dockrq-worker`` uses the same classes
(``usage_prog``, ``usage_json``: its name, and no ``--json``).
"""

from __future__ import annotations

import json
from typing import Any

import click

EXIT_USAGE = 125  # docker run's "error of the docker command itself"
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C (as docker; dockrq_entry.py exits so before a command runs)
_NO_ARGS_IS_HELP: tuple[type, ...] = tuple(
    t for t in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if t is not None
)


def json_error(message: str, exit_code: int, **details: Any) -> None:
    """Print an error as the one JSON line ``--json`` callers read on stdout:
    ``{"error": message, "exit_code": N, **details}``."""
    click.echo(json.dumps({"error": message, "exit_code": exit_code, **details}))


def _wants_json(ctx: click.Context, args: list[str]) -> bool:
    root = ctx.find_root()
    if getattr(root.obj, "as_json", False) or root.params.get("as_json"):  # the group's --json, set or just parsed
        return True
    # --json after the failing token is not parsed yet: look for it among the options.
    head = args[: args.index("--")] if "--" in args else args
    return "--json" in head


def usage_failure(
    exc: click.UsageError, ctx: click.Context, args: list[str], *, prog: str = "dockrq", json_errors: bool = True
) -> click.ClickException | click.exceptions.Exit:
    """What to raise for ``exc``, once it is printed: an Exit with docker's exit code. The error is
    one line on stderr naming the argument or option, with where to read more, as docker puts it
    (``dockrq: Invalid value for '--timeout': ... See 'dockrq wait --help'.``; ``prog`` starts
    it), or (``--json``, when ``json_errors``) the JSON error on stdout. ``dockrq`` alone is no
    error: its help, on stdout, exit 0 (as ``docker``)."""
    if isinstance(exc, _NO_ARGS_IS_HELP):
        click.echo(ctx.get_help())
        return click.exceptions.Exit(0)
    if json_errors and _wants_json(ctx, args):
        json_error(exc.format_message(), EXIT_USAGE)
    else:
        message = exc.format_message().rstrip()
        where = (exc.ctx or ctx).command_path
        click.echo(f"{prog}: {message}{'' if message.endswith(('.', '?')) else '.'} See '{where} --help'.", err=True)
    return click.exceptions.Exit(EXIT_USAGE)


class DockerUsageErrors:
    """Mixin for click commands and groups: usage errors exit 125 (``--json``: JSON on stdout).

    ``usage_prog`` starts the error line; ``usage_json`` False: the command has no ``--json``."""

    usage_prog = "dockrq"
    usage_json = True

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        original = list(args)
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except click.UsageError as exc:
            raise self.usage_failure(exc, ctx, original) from None

    def usage_failure(self, exc: click.UsageError, ctx: click.Context, args: list[str]) -> Exception:
        """``usage_failure`` with this command's ``usage_prog`` and ``usage_json``."""
        return usage_failure(exc, ctx, args, prog=self.usage_prog, json_errors=self.usage_json)


class DockrqGroup(DockerUsageErrors, click.Group):
    """The ``dockrq`` group: an unknown command is a usage error too (exit 125); Ctrl-C before a
    command's own handling starts (the options parsed, its modules imported) exits 130 quietly,
    as within it, not with click's "Aborted!" and 1."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise self.usage_failure(exc, ctx, list(args)) from None
