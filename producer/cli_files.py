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
from typing import Any

import click

from schemas import DEFAULT_MAX_INPUT_BYTES, Outcome, parse_size

from .cli import EXIT_DOCKRQ_FAILED, Settings, cli, fail, json_option, pass_settings
from .client import Producer
from .errors import InvalidRequest, ProducerError
from .extract import ExtractReport
from .params import COPY_SOURCE


def file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``dockrq submit`` takes for files (values end up in its ``**options``)."""
    for decorator in reversed(
        [
            click.option("--input", "inputs", multiple=True, metavar="LOCAL_PATH:CONTAINER_PATH",
                         help="Put a local file or directory into the container before it starts; repeatable."),
            click.option("--output", "outputs", multiple=True, metavar="CONTAINER_PATH",
                         help="Collect this path once the container has ended; repeatable (get them with dockrq cp)."),
            click.option("--output-files-limit", help="File bytes collected at most, e.g. 64m (default 16m; "
                         "the worker may cap it). What does not fit is left out whole."),
            click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                         help="Attached: write the collected files into this directory when the execution ends."),
            click.option("--max-input", envvar="DOCKRQ_MAX_INPUT_BYTES",
                         help="Refuse more input file bytes than this, before writing anything "
                         "(env DOCKRQ_MAX_INPUT_BYTES; default 16m)."),
        ]
    ):
        fn = decorator(fn)
    return fn


@dataclass
class FileOptions:
    inputs: dict[str, str] | None
    outputs: list[str]
    output_files_limit: int | None
    output_dir: Path | None
    max_input_bytes: int

    @classmethod
    def take(cls, options: dict[str, Any], detach: bool) -> FileOptions:
        """Remove the file options from ``submit``'s options; InvalidRequest names a bad one."""
        inputs: dict[str, str] = {}
        for item in options.pop("inputs"):
            local, sep, target = item.rpartition(":")
            if not sep or not local or not target:
                raise InvalidRequest(f"inputs: {item!r} is not LOCAL_PATH:CONTAINER_PATH")
            if target in inputs:
                raise InvalidRequest(f"inputs: {target} is given twice")
            inputs[target] = local
        limit = options.pop("output_files_limit")
        output_dir = options.pop("output_dir")
        max_input = options.pop("max_input")
        if output_dir is not None and detach:
            raise InvalidRequest("--output-dir: needs an attached submit (without -d); use dockrq cp ID:PATH DEST later")
        try:
            limit_bytes = parse_size(limit) if limit is not None else None
        except ValueError as exc:
            raise InvalidRequest(f"output_files_limit_bytes: {exc}") from None
        try:
            max_input_bytes = parse_size(max_input) if max_input else DEFAULT_MAX_INPUT_BYTES
        except ValueError as exc:
            raise InvalidRequest(f"--max-input (DOCKRQ_MAX_INPUT_BYTES): {exc}") from None
        return cls(inputs or None, list(options.pop("outputs")), limit_bytes, output_dir, max_input_bytes)

    def apply(self, request: dict[str, Any], producer: Producer) -> None:
        if self.outputs:
            request["outputs"] = self.outputs
        if self.output_files_limit is not None:
            request["output_files_limit_bytes"] = self.output_files_limit
        producer.max_input_bytes = self.max_input_bytes


def report_outputs(producer: Producer, outcome: Outcome, options: FileOptions, as_json: bool) -> bool:
    """After an attached submit: say what was collected and write it to ``--output-dir``.
    Returns False when the files could not be delivered to ``--output-dir``."""
    result = outcome.result
    if not options.outputs or result is None:
        return True
    quiet = as_json
    for path in result.outputs_missing:
        _warn(f"output {path} did not exist in the container", quiet)
    if result.outputs_truncated:
        _warn("output files over the limit were left out (output_files_limit_bytes)", quiet)
    if options.output_dir is None:
        if result.output_files and not quiet:
            _warn(f"{len(result.output_files)} output entries kept; get them with "
                  f"dockrq cp {outcome.execution_id}:PATH DEST", quiet)
        return True
    try:
        report = producer.outputs(outcome.execution_id, options.output_dir)
    except (ProducerError, OSError) as exc:
        click.echo(f"dockrq: output files not written to {options.output_dir}: {exc}", err=True)
        return False
    _skipped(report, quiet)
    return True


def describe_outputs(result: Any) -> str:
    """One line for ``dockrq status``: what the output archive holds."""
    files = [f for f in result.output_files if f.type == "file"]
    text = f"{len(result.output_files)} entries, {len(files)} files, {sum(f.size for f in files)} bytes"
    if result.outputs_truncated:
        text += ", some left out (over the limit)"
    if result.outputs_missing:
        text += f"; missing: {', '.join(result.outputs_missing)}"
    return text


def _warn(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"dockrq: {message}", err=True)


def _skipped(report: ExtractReport, quiet: bool = False) -> None:
    for message in report.skipped:
        click.echo(f"dockrq: skipped {message}", err=True)


@cli.command()
@json_option
@click.argument("source", metavar="ID:CONTAINER_PATH", type=COPY_SOURCE)
@click.argument("dest", metavar="LOCAL_DEST", type=click.Path(path_type=Path))
@pass_settings
def cp(settings: Settings, source: tuple[str, str], dest: Path) -> None:
    """Copy an ended execution's output files to the local disk, like docker cp.

    CONTAINER_PATH is one of the execution's --output paths, a path below one, or /
    for all of them. Into an existing directory LOCAL_DEST it keeps its own name;
    otherwise it becomes LOCAL_DEST. Entries that would leave LOCAL_DEST (absolute
    names, '..', symlinks pointing outside, devices) are skipped with a message.
    """
    execution_id, path = source  # params.COPY_SOURCE: a malformed one is a usage error (125)
    try:
        report = settings.producer().copy_out(execution_id, path, dest)
    except OSError as exc:
        fail(f"writing to {dest} failed: {exc}", 1)
    if settings.as_json:
        click.echo(json.dumps({"written": [str(p) for p in report.written], "skipped": report.skipped}))
        return
    _skipped(report)


__all__ = ["EXIT_DOCKRQ_FAILED", "FileOptions", "cp", "describe_outputs", "file_options", "report_outputs"]
