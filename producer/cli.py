"""``dockrq``: submit executions and follow them from a shell, like ``docker run``.

Exit codes (``submit`` attached and ``wait``; the other commands return 0 or 1, ``logs`` and
``status`` also 69):

===  =====================================================================
 N   the container's own exit code (succeeded, failed, OOM-killed)
124  the execution hit its ``--timeout`` (as ``timeout(1)``)
127  the container's command was not found in the image (as ``docker run``)
126  the container's command cannot be executed (as ``docker run``)
125  dockrq itself failed: request rejected, image pull/create/daemon
     error, worker lost, invalid request, unknown or duplicate id, Redis
     unreachable at ``submit`` (as ``docker run``)
130  the execution was cancelled (Ctrl-C on an attached submit cancels it;
     SIGTERM and SIGHUP do the same and exit 143 and 129: 128 + the signal)
 75  ``wait --timeout`` elapsed while the execution still runs (EX_TEMPFAIL)
 69  ``wait``, ``logs``, ``status``: Redis could not be reached within
     ``--redis-retry`` seconds (EX_UNAVAILABLE; producer.reaching)
  1  any other error of ``logs``, ``cancel``, ``status``, ``ls``, ``cp`` (also: an
     entry skipped, or nothing written; ``logs -f`` on a vanished execution, as
     for an unknown id)
125  bad command line: unknown flag, missing argument (as ``docker``)
141  the output pipe was closed (``dockrq logs ID | head``)
===  =====================================================================

Errors are one line on stderr, never a traceback. ``--json`` (before or after
the command name) switches every command's output to JSON for scripts, errors
included (``{"error", "exit_code"}`` on stdout).
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import click

from schemas.states import ExecutionStatus

from .command import (  # the exit codes are re-exported: producer.cli names them in its docstring
    EXIT_BROKEN_PIPE,
    EXIT_CANCELLED,
    EXIT_DOCKRQ_FAILED,
    EXIT_ERROR,
    EXIT_REDIS_UNREACHABLE,
    EXIT_TIMED_OUT,
    EXIT_WAIT_TIMEOUT,
    DockrqCommand,
    Settings,
    fail,
    global_options,
    json_option,
)
from .flags import build_request, scheduling_options
from .params import EXECUTION_ID, Seconds
from .run_flags import apply_run_flags, run_flag_options
from .usage import DockrqGroup

# Start-up (README, "Start-up"): this module imports what defining the commands needs. What
# running one needs (the Producer and redis-py, rq, rich) is imported in the function that
# runs it, so that ``dockrq --help`` and a refused command line load none of it.
if TYPE_CHECKING:
    from rich.console import Console

    from schemas import LogEntry, Outcome

    from .client import Producer
    from .status import ExecutionStatusView

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "Producer", "cli", "exit_code_for", "main"]


def __getattr__(name: str) -> Any:
    """``Producer``, the factory ``Settings.producer`` calls (the one name tests replace),
    imported on first use (PEP 562)."""
    if name != "Producer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .client import Producer

    globals()["Producer"] = Producer
    return Producer


def exit_code_for(outcome: Outcome) -> int:
    """The shell exit code an attached run reports for this outcome (table in the module doc)."""
    if outcome.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED) and outcome.exit_code is not None:
        return outcome.exit_code & 0xFF
    if outcome.status is ExecutionStatus.TIMED_OUT:
        return EXIT_TIMED_OUT
    if outcome.status is ExecutionStatus.CANCELLED:
        return EXIT_CANCELLED
    if outcome.error is not None and outcome.error.code in _EXIT_AS_DOCKER_RUN:
        return _EXIT_AS_DOCKER_RUN[outcome.error.code]
    return EXIT_DOCKRQ_FAILED


# docker run's codes for a command that could not be run (worker/executor/refusals.py)
_EXIT_AS_DOCKER_RUN = {"command_not_found": 127, "command_not_executable": 126}


@click.group(cls=DockrqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def cli(
    ctx: click.Context, redis_url: str, prefix: str, queue: str, retention_seconds: int,
    replica_acks: int, replica_ack_timeout: float, redis_retry_seconds: float, as_json: bool,
) -> None:
    """Run containers through a Redis queue of dockrq workers."""
    ctx.obj = Settings(
        redis_url, prefix, queue, retention_seconds, as_json, replica_acks, replica_ack_timeout, redis_retry_seconds
    )


cli.command_class = DockrqCommand
pass_settings = click.make_pass_decorator(Settings)


# -- output helpers ----------------------------------------------------------


def _write_entry(entry: LogEntry, as_json: bool) -> None:
    """Container output verbatim (stdout to stdout, stderr to stderr), or one JSON line per entry."""
    from .logs import AttemptStart

    if as_json:
        sys.stdout.write(entry.model_dump_json() + "\n")
        stream = sys.stdout
    else:
        stream = sys.stderr if entry.stream == "stderr" else sys.stdout
        stream.write(f"dockrq: attempt {entry.attempt} begins\n" if isinstance(entry, AttemptStart) else entry.data)
    stream.flush()


def _report(outcome: Outcome, settings: Settings, *, summary: bool) -> int:
    """Print how the execution ended and return the exit code for it."""
    if settings.as_json:
        click.echo(outcome.model_dump_json())
    elif outcome.result is None or outcome.status not in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED):
        error = outcome.error
        if error is None:
            detail = "no detail" if outcome.exit_code is None else f"container exit code {outcome.exit_code}"
        elif error.code != outcome.status.value and error.message:
            detail = f"{error.code}: {error.message}"
        else:
            detail = error.message or error.code
        click.echo(f"dockrq: execution {outcome.execution_id} {outcome.status.value}: {detail}", err=True)
    else:
        if outcome.result.oom_killed:
            click.echo(f"dockrq: execution {outcome.execution_id} was killed: out of memory", err=True)
        elif outcome.result.oom_kills:  # a child killed, the main process went on: said, not failed
            click.echo(
                f"dockrq: execution {outcome.execution_id}: the OOM killer acted {outcome.result.oom_kills} "
                f"time(s) inside the container (the main process was not killed)", err=True,
            )
        if summary:
            click.echo(f"{outcome.status.value} (exit {outcome.exit_code})")
    return exit_code_for(outcome)


def _console() -> Console:
    """Rich output; unbounded width when piped, so scripts and ``grep`` see whole ids and images."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=10_000)


def _ago(when: datetime | None) -> str:
    return _span((datetime.now(timezone.utc) - when).total_seconds()) if when else "-"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d"


# -- commands ----------------------------------------------------------------


def _file_options(fn: Any) -> Any:
    from .cli_files import file_options

    return file_options(fn)


@cli.command(context_settings={"allow_interspersed_args": False}, failure_code=EXIT_DOCKRQ_FAILED)
@click.option("--id", "--name", "execution_id", help="Execution id ([A-Za-z0-9_-]{1,64}); generated if absent.")
@click.option("--queue", "queue_name", help="rq queue for this execution (default: the global --queue).")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Environment variable; repeatable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("--entrypoint", help="Overwrite the image's entrypoint.")
@click.option("--cpus", type=float, help="CPU limit in cores.")
@click.option("-m", "--memory", help="Memory limit, e.g. 256m.")
@click.option("--pids", type=int, help="Process count limit.")
@click.option("--gpus", help="GPUs: 'all', a count (nvidia only), or 'device=0,1'.")
@click.option("--gpu-vendor", type=click.Choice(["nvidia", "amd", "intel"]), default="nvidia", show_default=True,
              help="Whose GPUs --gpus asks for.")
@click.option("-v", "--volume", multiple=True, metavar="SRC:DST[:ro|rw]",
              help="Bind a host path (read-only unless :rw; the worker must allow its root). Repeatable.")
@click.option("--timeout", type=float, help="Seconds before the container is stopped (outcome timed_out).")
@click.option("--network", type=click.Choice(["none", "bridge"]), help="Network (default none).")
@click.option("--output-limit", help="Bytes kept per stream in the result, e.g. 1m.")
@click.option("--pull", type=click.Choice(["always", "if_not_present", "never"]), help="Image pull policy.")
@scheduling_options
@click.option("-d", "--detach", is_flag=True, help="Print the execution id and return at once.")
@run_flag_options
@_file_options  # --input, --output, --output-files-limit, --output-dir, --max-input (cli_files.py)
@json_option
@click.argument("image")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def submit(
    settings: Settings, image: str, cmd: tuple[str, ...], queue_name: str | None, detach: bool, at_front: bool,
    depends_on: tuple[str, ...], **options: Any,
) -> None:
    """Run IMAGE [CMD...] on a worker; stay attached to its output and exit with its exit code."""
    from .attach_signals import signal_of, signals_interrupt
    from .errors import ExecutionVanished, ProducerError
    from .planning import caller_request

    producer = settings.producer()
    files = FileOptions.take(options, detach)
    request = apply_run_flags(build_request(image, cmd, options), options)
    files.apply(request, producer)
    caller_request(request)  # InvalidRequest before the progress display below subscribes to Redis
    from .progress import SubmitProgress  # rich: for a valid request only
    # While attached: waiting for a worker and the image pull, on stderr (producer/progress.py).
    progress = None if detach or settings.as_json else SubmitProgress.before_submit(producer, request, queue_name)
    with progress or nullcontext():
        execution_id = producer.submit(
            request, queue=queue_name, inputs=files.inputs, at_front=at_front, depends_on=depends_on or None
        )
        if detach:
            click.echo(json.dumps({"execution_id": execution_id}) if settings.as_json else execution_id)
            return
        try:
            with signals_interrupt():  # SIGTERM and SIGHUP as Ctrl-C (producer/attach_signals.py)
                if progress is not None:  # not --json: the container's output
                    for entry in producer.logs(execution_id, tail=True, follow=True):
                        progress.close()
                        _write_entry(entry, as_json=False)
                    progress.close()
                outcome = producer.wait(execution_id)
        except KeyboardInterrupt as exc:
            if progress is not None:
                progress.close()
            _cancel_after_interrupt(producer, execution_id, request, files, settings, signal_of(exc))
        except ExecutionVanished as exc:
            if not files.outputs:
                raise
            # Its worker may still end it and keep its output files: say how to get them then.
            raise ProducerError(f"{exc}; once it has ended get the outputs with dockrq cp {execution_id}:PATH DEST") from None
    code = _report(outcome, settings, summary=False)
    try:
        if not report_outputs(producer, outcome, files, settings.as_json):  # --output-dir (cli_files.py)
            code = EXIT_DOCKRQ_FAILED
    except KeyboardInterrupt:  # the execution has ended: only the local copy is cut short
        click.echo(f"dockrq: interrupted while writing the output files of {execution_id} (it ended "
                   f"{outcome.status.value}): not all written; get them with dockrq cp {execution_id}:PATH DEST", err=True)
        raise click.exceptions.Exit(EXIT_CANCELLED) from None
    raise click.exceptions.Exit(code)


def _cancel_after_interrupt(
    producer: Producer, execution_id: str, request: dict[str, Any], files: FileOptions, settings: Settings, signum: int
) -> NoReturn:
    """Cancel, wait (bounded; a second signal stops it) for the outcome, write the outputs as for
    any ending, exit 128 + ``signum`` (producer/attach_signals.py)."""
    from .attach_signals import cancel_and_wait, outcome_bound, signals_interrupt

    with signals_interrupt():
        message, outcome = cancel_and_wait(producer, execution_id, outcome_bound(request))
        if outcome is not None:
            report_outputs(producer, outcome, files, settings.as_json)  # --output-dir (cli_files.py)
        elif files.outputs and not settings.as_json:
            click.echo(f"dockrq: stopped waiting for the outcome; once it has ended get the outputs with "
                       f"dockrq cp {execution_id}:PATH DEST", err=True)
    fail(message, 128 + signum)


@cli.command(failure_code=EXIT_DOCKRQ_FAILED, unreachable_code=EXIT_REDIS_UNREACHABLE)
@click.option("--timeout", type=Seconds(), help="Give up after this many seconds (exit 75).")
@json_option
@click.argument("execution_ids", nargs=-1, required=True, metavar="ID...", type=EXECUTION_ID)
@pass_settings
def wait(settings: Settings, execution_ids: tuple[str, ...], timeout: float | None) -> None:
    """Wait for executions to end; exit with the exit code of the worst (see ``worst_exit_code``)."""
    from .waitcli import not_ended_state, one_line_reporter, wait_several

    if len(execution_ids) == 1:
        (execution_id,) = execution_ids
        try:
            outcome = settings.producer().wait(execution_id, timeout=timeout)
        except TimeoutError:
            state = not_ended_state(settings.producer(), execution_id)  # queued, running...: what it really is
            fail(f"execution {execution_id} still {state} after {timeout:g}s", EXIT_WAIT_TIMEOUT, pending=[execution_id])
        raise click.exceptions.Exit(_report(outcome, settings, summary=True))
    report = one_line_reporter(settings.as_json, exit_code_for)
    raise click.exceptions.Exit(
        wait_several(settings.producer(), list(execution_ids), timeout, report, as_json=settings.as_json)
    )


class _Tail(click.ParamType):
    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool | int:
        if value in (True, "all"):
            return True
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of lines or 'all'", param, ctx)
        if n < 0:
            self.fail("must be >= 0", param, ctx)
        return n


@cli.command(unreachable_code=EXIT_REDIS_UNREACHABLE)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the execution ends.")
@click.option("-n", "--tail", type=_Tail(), default="all", show_default=True,
              help="Last N lines of the output (both streams, as docker logs --tail), or all.")
@json_option
@click.argument("execution_id", type=EXECUTION_ID)
@pass_settings
def logs(settings: Settings, execution_id: str, follow: bool, tail: bool | int) -> None:
    """Print an execution's output (stdout to stdout, stderr to stderr)."""
    for entry in settings.producer().logs(execution_id, tail=tail, follow=follow):
        _write_entry(entry, settings.as_json)


@cli.command()
@json_option
@click.argument("execution_id", type=EXECUTION_ID)
@pass_settings
def cancel(settings: Settings, execution_id: str) -> None:
    """Cancel an execution: queued or scheduled ones never start, running ones are stopped."""
    result = settings.producer().cancel(execution_id)
    if settings.as_json:
        click.echo(json.dumps({"execution_id": execution_id, "result": result}))
    elif result == "cancelled":
        click.echo(f"cancelled {execution_id}")
    else:
        click.echo(f"cancel requested for {execution_id}; its worker is stopping it")


@cli.command(unreachable_code=EXIT_REDIS_UNREACHABLE)
@json_option
@click.argument("execution_id", type=EXECUTION_ID)
@pass_settings
def status(settings: Settings, execution_id: str) -> None:
    """Show where an execution is, or how it ended."""
    view = settings.producer().status(execution_id)
    if settings.as_json:
        click.echo(view.model_dump_json())
        return
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    for name, value in _status_rows(view):
        table.add_row(f"[bold]{name}[/]", value)
    _console().print(table)


def _status_rows(view: ExecutionStatusView) -> list[tuple[str, str]]:
    outcome = view.outcome
    rows = [
        ("id", view.execution_id),
        ("state", view.state.value),
        ("queue", view.queue or "-"),
        ("image", view.image or "-"),
        ("node", view.node or "-"),
        ("worker", view.worker or "-"),
        ("container", view.container_id or "-"),
        ("enqueued", _ago(view.enqueued_at) + " ago" if view.enqueued_at else "-"),
        ("queued", _span(view.queued_seconds)),
        ("pulling", _span(view.pull_seconds)),
        ("running", _span(view.run_seconds)),
    ]
    if view.attempt > 1:
        rows.append(("attempt", str(view.attempt)))
    if outcome is not None and outcome.exit_code is not None:
        rows.append(("exit code", str(outcome.exit_code)))
    if outcome is not None and outcome.result is not None and outcome.result.oom_killed:
        rows.append(("oom killed", "yes"))
    if outcome is not None and outcome.result is not None and outcome.result.oom_kills:
        rows.append(("oom kills", str(outcome.result.oom_kills)))
    if outcome is not None and outcome.error is not None:
        rows.append(("error", f"{outcome.error.code}: {outcome.error.message}"))
    result = outcome.result if outcome is not None else None
    if result is not None and (result.outputs_archive_bytes is not None or result.outputs_truncated):
        rows.append(("outputs", describe_outputs(result)))  # also when collecting them failed: none kept
    return rows


from .cli_list import list_executions  # noqa: E402 - needs the group and helpers above

cli.add_command(list_executions)


from .cli_files import FileOptions, describe_outputs, report_outputs  # noqa: E402 - registers `dockrq cp` too


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dockrq`` script. The library's warnings (a Redis outage ridden out
    while waiting or following) go to stderr as ``dockrq: ...`` lines, as its errors do."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dockrq: %(message)s"))
    logging.getLogger("producer").addHandler(handler)
    logging.getLogger("producer").setLevel(logging.WARNING)
    cli.main(args=argv, prog_name="dockrq")

