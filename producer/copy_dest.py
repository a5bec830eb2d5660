"""Where ``dockrq cp ID:CONTAINER_PATH DEST`` puts things: ``docker cp``'s destination rules.

These are docker/cli's ``archive.CopyInfoDestinationPath`` and
``archive.PrepareArchiveCopy`` (``docker cp CONTAINER:SRC DEST``), applied before
anything is written:

* ``DEST`` is looked up without following a symlink at its end, then, if it is a
  symlink, its target is (at most 10 links deep): ``docker cp`` writes to the target;
* ``DEST`` exists and is a directory: the source goes inside it under its own name;
* ``DEST`` exists and is not a directory: a file source replaces it; a directory
  source is refused ("cannot copy a directory to a file");
* ``DEST`` does not exist: its parent must be an existing directory; a directory
  source is created as ``DEST``; a file source becomes ``DEST``, unless ``DEST``
  ends in ``/`` (or ``/.``), which asserts a directory: refused ("the destination
  directory must exist");
* ``DEST/`` where ``DEST`` is a file: refused (not a directory).

A refusal raises ``CopyRefused`` and changes nothing on disk. ``copy_selection``
turns a collected container path and a destination into where and under which
names ``extract.safe_extract`` writes.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import MAX_OUTPUT_ENTRIES, Outcome, check_container_path, entry_name
from schemas.engine import format_size
from schemas.files import MAX_OUTPUT_PATH_BYTES
from schemas.text import quoted_name, shown_path, unescaped_name

from .errors import CopyRefused
from .files import OutputsUnavailable, announced

MAX_SYMLINKS = 10  # docker/cli's maxSymlinkIter


@dataclass(frozen=True)
class CopyPlacement:
    """Where to extract: into the existing directory ``directory``, the source's top entry
    named ``name`` there (None: its own name)."""

    directory: Path
    name: str | None


def _lstat(path: str, shown: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # "file/": ENOTDIR; ENAMETOOLONG, EACCES...
        raise CopyRefused(f"{shown_path(shown)}: {exc.strerror or exc}; nothing copied") from None


def place(dest: str | os.PathLike[str], source_is_dir: bool) -> CopyPlacement:
    """Apply the rules above to ``dest`` for a directory (``source_is_dir``) or file source.
    Raises CopyRefused naming ``dest``."""
    shown = os.fspath(dest)
    if not shown:
        raise CopyRefused("the destination is empty; nothing copied")
    asserts_dir = shown.endswith(os.sep) or os.path.basename(shown) == "."
    path = shown
    info = _lstat(path, shown)
    hops = 0
    while info is not None and stat.S_ISLNK(info.st_mode):
        hops += 1
        if hops > MAX_SYMLINKS:
            raise CopyRefused(f"{shown_path(shown)}: too many symlinks; nothing copied")
        target = os.readlink(path)
        path = target if os.path.isabs(target) else os.path.join(os.path.dirname(os.path.normpath(path)), target)
        info = _lstat(path, shown)
    clean = os.path.normpath(path)
    parent, base = os.path.split(clean)
    parent = parent or "."
    if info is not None and stat.S_ISDIR(info.st_mode):
        return CopyPlacement(Path(path), None)
    if info is not None:
        if source_is_dir:
            raise CopyRefused(f"{shown_path(shown)}: cannot copy a directory to a file; nothing copied")
        return CopyPlacement(Path(parent), base)
    try:
        parent_info = os.stat(parent)
    except OSError as exc:
        raise CopyRefused(f"{shown_path(shown)}: its directory {shown_path(parent)}: {exc.strerror or exc}; nothing copied") from None
    if not stat.S_ISDIR(parent_info.st_mode):
        raise CopyRefused(f"{shown_path(shown)}: {shown_path(parent)} is not a directory; nothing copied")
    if not source_is_dir and asserts_dir:
        raise CopyRefused(f"{shown_path(shown)}: the destination directory must exist (a file cannot create it); nothing copied")
    return CopyPlacement(Path(parent), base)


def collected_kind(outcome: Outcome, container_path: str, requested: list[str] | None = None) -> bool:
    """Whether ``container_path`` (collected, or ``/``) is a directory; OutputsUnavailable when
    the execution has no such output (no container, none named or collected, missing, not
    collected, left out). ``requested``: the request's ``outputs`` (None: not known, its rq job
    gone); what was left out is named only for a path that could have been among it: under a
    requested path, else under a collected directory or an entry left out."""
    result = outcome.result
    if result is None or (result.outputs_archive_bytes is None and result.container_id is None):  # no container ran
        status = outcome.status.value
        raise OutputsUnavailable(f"{outcome.execution_id} ended {status} without a container: it has no output files")
    if result.outputs_archive_bytes is None:  # named no outputs, or none could be collected: as outputs() says
        announced(outcome)
    if container_path == "/":
        return True
    try:
        check_container_path(container_path, MAX_OUTPUT_PATH_BYTES, colon_ok=True)
    except ValueError as exc:
        raise OutputsUnavailable(f"{quoted_name(container_path[:200])}: {exc}") from None
    # Listed names the container made that are not UTF-8 are escaped (OutputFile.escaped): compared
    # as the raw names they stand for, which is what the archive holds and what cp is given.
    listed = [(unescaped_name(f.path) if f.escaped else f.path, f) for f in result.output_files]
    below = [(raw, f) for raw, f in listed if raw == container_path or raw.startswith(container_path + "/")]
    if not below:
        if container_path in result.outputs_missing:
            raise OutputsUnavailable(f"{container_path} did not exist in the container of {outcome.execution_id}")
        for entry in getattr(result, "outputs_skipped", None) or []:
            if not entry.escaped and entry.path == container_path:
                raise OutputsUnavailable(f"{container_path} was not collected: {skipped_reason(entry)}")
        could = result.outputs_truncated and _could_be_left_out(result, container_path, listed, requested)
        why = f" (left out: {truncation_reason(result)})" if could else ""
        raise OutputsUnavailable(f"{container_path} is not among the output files of {outcome.execution_id}{why}")
    return any(f.type == "dir" or raw != container_path for raw, f in below)


def _could_be_left_out(result: Any, path: str, listed: list[tuple[str, Any]], requested: list[str] | None) -> bool:
    """Whether ``path`` (not listed) lies where entries were left out: under (or at) a requested
    output path; not knowing the request, strictly under a collected directory or under a
    skipped entry."""
    def under(root: str, strictly: bool = False) -> bool:
        return root == "/" or path.startswith(root + "/") or (not strictly and path == root)

    if requested is not None:
        return any(under(root) for root in requested)
    skipped = [entry.path for entry in getattr(result, "outputs_skipped", None) or [] if not entry.escaped]
    return any(under(raw, strictly=True) for raw, f in listed if f.type == "dir") or any(under(p) for p in skipped)


def copy_selection(
    outcome: Outcome, container_path: str, dest: str | os.PathLike[str]
) -> tuple[Path, Callable[[str], str | None], str | None]:
    """Where ``dockrq cp ID:container_path dest`` extracts, and how entry names map there.

    ``docker cp``'s destination rules (``copy_dest.place``): into an existing
    directory ``dest`` the path keeps its own name (``dest/out``); otherwise it
    becomes ``dest`` itself. ``/`` is a directory whose contents go into ``dest``.
    Raises OutputsUnavailable when the path was not collected, CopyRefused (nothing
    written) when the destination rules refuse it.
    """
    source_is_dir = collected_kind(outcome, container_path)
    if container_path == "/":
        placed = place(dest, source_is_dir=True)
        if placed.name is None:
            return placed.directory, lambda name: name, None
        new = placed.name
        return placed.directory, lambda name: f"{new}/{name}", new
    placed = place(dest, source_is_dir)
    prefix = entry_name(container_path)
    top = placed.name if placed.name is not None else posixpath.basename(container_path)

    def rename(name: str) -> str | None:
        if name == prefix:
            return top
        if name.startswith(prefix + "/"):
            return top + name[len(prefix):]
        return None

    return placed.directory, rename, placed.name  # a new name: its links stay inside it


def truncation_reason(result: Any) -> str:
    """Why output files were left out (``result.outputs_truncated_by``), as words for a message;
    the limit named with the value the worker applied (``output_files_limit_bytes``) and, when
    the worker's DOCKRQ_MAX_OUTPUT_FILES_BYTES lowered the request's, saying so."""
    reasons = getattr(result, "outputs_truncated_by", None) or []
    words = {
        "entries": f"over the {MAX_OUTPUT_ENTRIES} entries kept per execution",
        "bytes": _limit_words(result),
        "read_limit": "more than 256 MiB of files over the limit were read past, so the rest of that output "
                      "path was left unread (ask for its other files as --output paths of their own)",
        "unsupported": "entries dockrq cannot store (a path over 4096 bytes, or not a plain path)",
        "special": "devices, fifos, sockets or runtime paths (/dev, /proc, /sys), which are never collected",
        "error": "collecting them failed",
    }
    if not reasons:
        return "over the output files limit"
    return "; ".join(words.get(r, r) for r in reasons)


def _limit_words(result: Any) -> str:
    limit = getattr(result, "output_files_limit_bytes", None)
    if limit is None:  # a worker from before the field
        return "over the output files limit (output_files_limit_bytes)"
    if getattr(result, "output_files_limit_capped", False):
        return (f"over the output files limit of {format_size(limit)} set by the worker's policy "
                "(DOCKRQ_MAX_OUTPUT_FILES_BYTES), lower than the request's output_files_limit_bytes")
    return f"over the output files limit of {format_size(limit)} (output_files_limit_bytes)"


def skipped_reason(entry: Any) -> str:
    """Why one existing output entry (``result.outputs_skipped``) was not collected, as words."""
    if entry.reason == "special":
        what = "a runtime path, there only while the container ran" if entry.type == "runtime" else f"a {entry.type}"
        return f"{what}: not collected"
    return "a path dockrq cannot store (over 4096 bytes, or not a plain path): not collected"
