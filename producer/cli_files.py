"""The ``dockrq`` CLI's files in and out: ``submit --input/--output/--output-dir`` and ``cp``.

``--input LOCAL_PATH:CONTAINER_PATH`` (repeatable) sends a local file or
directory into the container before it starts; ``--output CONTAINER_PATH``
(repeatable) collects a path once it has ended; attached, ``--output-dir DIR``
writes the collected files into DIR under their container paths. ``dockrq cp
ID:CONTAINER_PATH DEST`` gets them later, like ``docker cp``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from schemas.defaults import DEFAULT_MAX_INPUT_BYTES
from schemas.text import quoted_name, shown_path

from .cli import EXIT_DOCKRQ_FAILED, EXIT_ERROR, Settings, cli, fail, json_option, pass_settings
from .errors import InvalidRequest, ProducerError
from .params import COPY_SOURCE
from .usage import EXIT_USAGE

# The copying machinery (tarfile, redis-py) and the models are imported where a command
# uses them (producer.cli).
if TYPE_CHECKING:
    from schemas import Outcome

    from .client import Producer
    from .extract import ExtractReport
    from .files import FollowLink


def file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``dockrq submit`` takes for files (values end up in its ``**options``)."""
    for decorator in reversed(
        [
            click.option("--input", "inputs", multiple=True, metavar="LOCAL_PATH:CONTAINER_PATH",
                         help="Put a local file or directory into the container before it starts; repeatable. "
                         "A LOCAL_PATH that is a symlink goes in as that symlink (as docker cp), unless -L."),
            click.option("-L", "--follow-link", is_flag=True,
                         help="Follow each --input LOCAL_PATH that is itself a symlink (docker cp -L); "
                         "symlinks inside a directory are never followed."),
            click.option("--output", "outputs", multiple=True, metavar="CONTAINER_PATH",
                         help="Collect this path once the container has ended; repeatable (get them with dockrq cp)."),
            click.option("--output-files-limit", help="File bytes collected at most, e.g. 64m (default 16m; "
                         "the worker may cap it). What does not fit is left out whole."),
            click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Attached, with --output: write the collected files into this directory when the execution ends "
                         "(also after Ctrl-C/SIGTERM/SIGHUP cancelled it)."),
            click.option("--max-input", envvar="DOCKRQ_MAX_INPUT_BYTES",
                         help="Refuse more input file bytes than this, before writing anything "
                         "(env DOCKRQ_MAX_INPUT_BYTES; default 16m)."),
        ]
    ):
        fn = decorator(fn)
    return fn


@dataclass
class FileOptions:
    inputs: dict[str, str | FollowLink] | None
    outputs: list[str]
    output_files_limit: int | None
    output_dir: Path | None
    max_input_bytes: int

    @classmethod
    def take(cls, options: dict[str, Any], detach: bool) -> FileOptions:
        """Remove the file options from ``submit``'s options; InvalidRequest names a bad one."""
        from schemas import parse_size

        from .files import FollowLink

        inputs: dict[str, str | FollowLink] = {}
        follow = options.pop("follow_link")
        for item in options.pop("inputs"):
            local, sep, target = item.rpartition(":")  # a container path never holds ':' (wire contract)
            if not sep or not local or not target:
                raise InvalidRequest(f"inputs: {quoted_name(item)} is not LOCAL_PATH:CONTAINER_PATH")
            target = _given(target, "inputs")
            if target in inputs:
                raise InvalidRequest(f"inputs: {target} is given twice")
            inputs[target] = FollowLink(local) if follow else local
        limit = options.pop("output_files_limit")
        output_dir = options.pop("output_dir")
        max_input = options.pop("max_input")
        outputs = [_given(path, "outputs") for path in options.pop("outputs")]
        if output_dir is not None and not outputs:
            raise InvalidRequest("--output-dir: needs at least one --output CONTAINER_PATH to collect")
        if output_dir is not None and detach:
            raise InvalidRequest("--output-dir: needs an attached submit (without -d); use dockrq cp ID:PATH DEST later")
        if output_dir is not None:
            _check_output_dir(output_dir)
        try:
            limit_bytes = parse_size(limit) if limit is not None else None
        except ValueError as exc:
            raise InvalidRequest(f"output_files_limit_bytes: {exc}") from None
        try:
            max_input_bytes = parse_size(max_input) if max_input else DEFAULT_MAX_INPUT_BYTES
        except ValueError as exc:
            raise InvalidRequest(f"--max-input (DOCKRQ_MAX_INPUT_BYTES): {exc}") from None
        return cls(inputs or None, outputs, limit_bytes, output_dir, max_input_bytes)

    def apply(self, request: dict[str, Any], producer: Producer) -> None:
        if self.outputs:
            request["outputs"] = self.outputs
        if self.output_files_limit is not None:
            request["output_files_limit_bytes"] = self.output_files_limit
        producer.max_input_bytes = self.max_input_bytes


def _check_output_dir(output_dir: Path) -> None:
    """InvalidRequest naming ``--output-dir`` unless it can be created or written: its nearest
    existing ancestor (itself if it exists) must be a directory this user may write into."""
    import os

    existing = output_dir
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    shown = shown_path(output_dir)
    if not existing.is_dir():  # a file on the way: mkdir would say "Not a directory" once the job has run
        raise InvalidRequest(f"--output-dir: cannot create {shown}: {shown_path(existing)} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write into" if existing == output_dir else "create"
        raise InvalidRequest(f"--output-dir: cannot {verb} {shown}: {shown_path(existing)} is not writable")


def _given(path: str, option: str) -> str:
    """A container path of ``--input``/``--output``, normalised (``producer.cp_paths.given_path``)."""
    from .cp_paths import given_path

    try:
        return given_path(path)
    except ValueError as exc:
        raise InvalidRequest(f"{option}: {exc}") from None


def report_outputs(producer: Producer, outcome: Outcome, options: FileOptions, as_json: bool) -> bool:
    """After an attached submit: say what was collected and write it to ``--output-dir``.
    Returns False when the files could not be delivered to ``--output-dir``."""
    from .copy_dest import skipped_reason, truncation_reason

    result = outcome.result
    if not options.outputs or result is None:
        return True
    quiet = as_json
    for path in result.outputs_missing:
        _warn(f"output {path} did not exist in the container", quiet)
    for entry in result.outputs_skipped:
        _warn(f"output {quoted_name(entry.path[:200])} left out: {skipped_reason(entry)}", quiet)
    if result.outputs_truncated:
        _warn(f"output files were left out: {truncation_reason(result)}", quiet)
    if options.output_dir is None:
        if result.output_files and not quiet:
            _warn(f"{len(result.output_files)} output entries kept; get them with "
                  f"dockrq cp {outcome.execution_id}:PATH DEST", quiet)
        return True
    try:
        report = producer.outputs(outcome.execution_id, options.output_dir, on_skip=_skip_line)
    except (ProducerError, OSError) as exc:
        eid = outcome.execution_id
        # a local failure (disk full, permissions changed): the archive is kept with the execution's retention
        later = f"; get them with dockrq cp {eid}:PATH DEST (kept with the execution)" if isinstance(exc, OSError) else ""
        click.echo(f"dockrq: output files of {eid} not written to {shown_path(options.output_dir)}: {_reason(exc)}{later}",
                   err=True)
        return False
    if report.skipped:  # each said above; the files are not all delivered
        click.echo(f"dockrq: {len(report.skipped)} output entries not written to {shown_path(options.output_dir)}", err=True)
        return False
    return True


def describe_outputs(result: Any) -> str:
    """One line for ``dockrq status``: what the output archive holds, or why there is none."""
    from .copy_dest import truncation_reason

    if result.outputs_archive_bytes is None:  # collecting them failed (outputs_truncated_by "error")
        return f"none kept: {truncation_reason(result)}"
    files = [f for f in result.output_files if f.type == "file"]
    text = f"{len(result.output_files)} entries, {len(files)} files, {sum(f.size for f in files)} bytes"
    if result.outputs_truncated:
        text += f", some left out ({truncation_reason(result)})"
    if result.outputs_missing:
        text += f"; missing: {', '.join(result.outputs_missing)}"
    if result.outputs_skipped:
        text += f"; not collectable: {', '.join(quoted_name(e.path[:200]) for e in result.outputs_skipped)}"
    return text


def _reason(exc: BaseException) -> str:
    """An error's words without the repr of a local path (OSError's str has one): its strerror."""
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


def _warn(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"dockrq: {message}", err=True)


def _skip_line(message: str) -> None:
    """One skipped entry, said on stderr as it happens (also when the copy fails later)."""
    click.echo(f"dockrq: skipped {message}", err=True)


@cli.command()
@json_option
@click.argument("source", metavar="ID:CONTAINER_PATH", type=COPY_SOURCE)
@click.argument("dest", metavar="LOCAL_DEST|-", type=click.Path())  # a str: a trailing '/' means a directory
@pass_settings
def cp(settings: Settings, source: tuple[str, str], dest: str) -> None:
    """Copy an ended execution's output files to the local disk, like docker cp.

    CONTAINER_PATH is one of the execution's --output paths, a path below one, or /
    for all of them. docker cp's destination rules: into an existing directory
    LOCAL_DEST it keeps its own name; a file replaces an existing file; otherwise it
    becomes LOCAL_DEST, whose directory must exist. A directory onto a file, or a
    file onto a missing LOCAL_DEST/, is refused with nothing written. LOCAL_DEST '-'
    writes a tar stream of CONTAINER_PATH to stdout. Entries that would leave
    LOCAL_DEST (absolute names, '..', symlinks pointing outside, devices), replace a
    directory or a file of the other kind, or fail on the local disk are skipped with
    a message and the rest written; the exit code is then 1.
    """
    from .extract import ArchiveRefused

    execution_id, path = source  # params.COPY_SOURCE: a malformed one is a usage error (125)
    if dest == "-":
        _cp_to_stdout(settings, execution_id, path)
        return
    live = None if settings.as_json else _skip_line
    try:
        report = settings.producer().copy_out(execution_id, path, dest, on_skip=live)
    except ArchiveRefused as exc:
        fail(str(exc), EXIT_ERROR, **_json_report(exc.report, settings))
    except OSError as exc:
        fail(f"writing to {shown_path(dest)} failed: {exc.strerror or exc}", EXIT_ERROR)
    if not report.complete:
        why = f"{len(report.skipped)} entries skipped" if report.skipped else "nothing was written"
        fail(f"{why}; {len(report.written)} written to {shown_path(dest)}", EXIT_ERROR, **_json_report(report, settings))
    if settings.as_json:
        click.echo(json.dumps(_json_report(report, settings)))


def _json_report(report: ExtractReport, settings: Settings) -> dict[str, Any]:
    if not settings.as_json:
        return {}
    return {"written": [str(p) for p in report.written], "skipped": report.skipped}


def _cp_to_stdout(settings: Settings, execution_id: str, path: str) -> None:
    """``dockrq cp ID:PATH -``: the tar stream on stdout, nothing else there (messages on stderr)."""
    if settings.as_json:
        fail("--json cannot be used with LOCAL_DEST '-': stdout is the tar stream", EXIT_USAGE)
    out = click.get_binary_stream("stdout")
    entries = settings.producer().copy_out_archive(execution_id, path, out)
    out.flush()
    if entries == 0:
        fail(f"{execution_id}:{path}: nothing was written", EXIT_ERROR)


__all__ = ["EXIT_DOCKRQ_FAILED", "FileOptions", "cp", "describe_outputs", "file_options", "report_outputs"]
