"""Extracting an output archive onto the local disk without ever leaving the destination.

An output archive comes from a container, so it is treated as hostile. Every
entry is checked before anything is written, and one that breaks a rule is
skipped with a message (``ExtractReport.skipped``) while the rest is extracted:

* names are plain relative paths: absolute names, ``..`` and empty or ``.``
  components are skipped;
* nothing is written through a symlink: every directory on the way to an entry
  must be a real directory under the destination (made by this extraction or
  already there), so a symlink the archive made earlier cannot redirect a later
  entry;
* a symlink is kept only if its target is relative, with any ``..`` only at its
  start, and stays inside the destination from where the link is; absolute and
  escaping targets are skipped;
* a hard link is kept only if it names a regular file this extraction wrote;
* devices, fifos and other special files are skipped;
* a directory never replaces a non-directory already there (a file, a symlink),
  and a non-directory never replaces a directory (``docker cp``'s
  ``NoOverwriteDirNonDir``): the entry, and everything under a directory so
  refused, is skipped with one message; a file replaces a file (as ``docker cp``);
* modes lose setuid/setgid/sticky and group/other write bits; owners are not set.

An error of the local filesystem on one entry (``ENAMETOOLONG``, ``EACCES``,
``ENOSPC``...) skips that entry too (no partial file is left) and the
extraction goes on. A skip line names the local path the entry would have had
(the destination as given joined with its name there: ``'o1/pw'``), or, for an
absolute or ``..`` name that has none, the archive name. Names in messages are
quoted by ``schemas.text.quoted_name``
(``'caf\\xe9'`` is byte 0xE9, ``'a\\\\b'`` a backslash). More entries, or more file
bytes, than the outcome announces stop the extraction with ``ArchiveRefused``
(what was written so far stays; its ``report`` lists it and the skips so far).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from schemas.text import quoted_name

from .errors import ProducerError

CHUNK = 256 * 1024


@dataclass
class ExtractReport:
    """What an extraction did: ``written``, the local paths written (files, directories, links),
    in archive order; ``skipped``, one line per entry not written, ``'NAME': why`` (the name
    quoted by ``schemas.text.quoted_name``). ``complete``: something was written, nothing skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.written) and not self.skipped


class ArchiveRefused(ProducerError):
    """The archive is damaged or holds more entries or bytes than announced; extraction stopped.
    ``report``: what was written and skipped before it stopped."""

    def __init__(self, message: str, report: ExtractReport | None = None) -> None:
        super().__init__(message)
        self.report = report if report is not None else ExtractReport()


def plain(name: str) -> bool:
    """Whether ``name`` is a plain relative path: not absolute, no ``..``, ``.`` or empty parts."""
    return bool(name) and not name.startswith("/") and "\x00" not in name and all(
        part not in ("", ".", "..") for part in name.split("/")
    )


def link_stays_inside(rel: str, linkname: str) -> bool:
    """Whether a symlink at ``rel`` (relative to the destination) pointing to ``linkname``
    resolves inside the destination whatever its components turn out to be.

    Only relative targets whose ``..`` parts all come first qualify: those climb real
    directories of the destination (so lexical and actual resolution agree) and then
    only descend. ``a/../../x`` does not qualify even where it looks harmless, since
    ``a`` may itself be a symlink.
    """
    if not linkname or linkname.startswith("/") or "\x00" in linkname:
        return False
    parts = [p for p in linkname.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if any(p == ".." for p in parts[ups:]):
        return False
    return ups <= rel.count("/")  # the link's directory is that many levels below the destination


def safe_extract(
    source: BinaryIO,
    dest: Path | str,
    *,
    rename: Callable[[str], str | None] = lambda name: name,
    max_entries: int,
    max_file_bytes: int,
    on_skip: Callable[[str], None] | None = None,
    link_root: str | None = None,
) -> ExtractReport:
    """Extract the tar stream ``source`` into ``dest`` (created if missing) by the rules above.

    ``rename`` maps each entry name to its path relative to ``dest`` (None: not
    wanted, passed over silently). ``max_entries`` and ``max_file_bytes`` are what
    the archive was announced to hold. ``on_skip`` is called with each skip line as
    it happens (so a caller can show it even if the extraction fails later).
    ``link_root``: the entry (relative to ``dest``) that is the destination the user
    named, when ``dest`` is only its parent (``dockrq cp ID:/out new``): symlinks below
    it must stay inside it, not merely inside ``dest``. Raises
    ArchiveRefused (with the report so far), or OSError when ``dest`` cannot be made.
    """
    return _Extraction(Path(dest), rename, on_skip, link_root).run(source, max_entries, max_file_bytes)


class _Extraction:
    def __init__(
        self, dest: Path, rename: Callable[[str], str | None], on_skip: Callable[[str], None] | None,
        link_root: str | None = None,
    ) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.shown_root = os.fspath(dest)  # as given: skip lines name the local path an entry would have had
        self.root = Path(os.path.realpath(dest))
        self.rename = rename
        self.on_skip = on_skip
        self.link_root = link_root
        self.report = ExtractReport()
        self._files: dict[str, str] = {}  # archive name -> local rel of the regular files written
        self._dirs: list[tuple[Path, int, float]] = []
        self._refused_dirs: list[str] = []  # local rels of directories not made: what is under them is dropped

    def run(self, source: BinaryIO, max_entries: int, max_file_bytes: int) -> ExtractReport:
        entries = file_bytes = 0
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                for member in tar:
                    entries += 1
                    if entries > max_entries:
                        raise ArchiveRefused(
                            f"the archive holds more entries than the {max_entries} announced; stopped", self.report
                        )
                    if member.isreg():
                        file_bytes += member.size
                        if file_bytes > max_file_bytes:
                            raise ArchiveRefused(
                                f"the archive holds more file bytes than the {max_file_bytes} announced; stopped",
                                self.report,
                            )
                    self._guarded_entry(tar, member)
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveRefused(f"the archive is damaged: {exc}", self.report) from None
        finally:
            self._set_dir_modes()
        return self.report

    def _skip(self, name: str, why: str, rel: str | None = None) -> None:
        """Say a skipped entry: by the local path it would have had (``rel`` below the destination),
        else (no such path: absolute, ``..``) by its archive name."""
        tail = rel if rel is not None else name
        shown = tail[:200] if rel is None or self.shown_root == "." else os.path.join(self.shown_root, tail[:200])
        line = f"{quoted_name(shown)}{'...' if len(tail) > 200 else ''}: {why}"
        self.report.skipped.append(line)
        if self.on_skip is not None:
            self.on_skip(line)

    def _guarded_entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """One entry; an error of the local filesystem skips it (the tar stream reads past its data)."""
        try:
            self._entry(tar, member)
        except OSError as exc:
            name = member.name.rstrip("/")
            rel = self.rename(name) if plain(name) else None
            rel = rel if rel is not None and plain(rel) else None
            if member.isdir() and rel is not None:  # not made: what is under it is dropped with this one message
                self._refused_dirs.append(rel)
            why = f"not written: {exc.strerror or exc}{' (nothing under it copied)' if member.isdir() else ''}"
            self._skip(name, why, rel)

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name.rstrip("/") if member.isdir() else member.name
        if not plain(name):
            self._skip(name, "not a plain relative path (absolute, '..' or empty parts)")
            return
        rel = self.rename(name)
        if rel is None:
            return
        if not plain(rel):
            self._skip(name, "not a plain relative path (absolute, '..' or empty parts)")
            return
        if any(rel.startswith(top + "/") for top in self._refused_dirs):
            return  # under a directory refused with its own message
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            self._skip(name, "a device or special file", rel)
            return
        parent = self._parent(rel)
        if parent is None:
            self._skip(name, "a directory on its way is a symlink or a file", rel)
            return
        target = parent / rel.rsplit("/", 1)[-1]
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            if member.isdir():
                return
            self._skip(name, "would replace a directory", rel)
            return
        if existing is not None and member.isdir():
            kind = "symlink" if stat.S_ISLNK(existing.st_mode) else "file"
            self._skip(name, f"a directory, and a {kind} is there: not replaced (nothing under it copied)", rel)
            self._refused_dirs.append(rel)
            return
        inside = rel[len(self.link_root) + 1:] if self.link_root and rel.startswith(self.link_root + "/") else rel
        if member.issym() and not link_stays_inside(inside, member.linkname):
            self._skip(name, f"a symlink to {quoted_name(member.linkname[:200])}, outside the destination", rel)
            return
        if member.islnk() and member.linkname not in self._files:
            self._skip(name, f"a hard link to {quoted_name(member.linkname[:200])}, not a file extracted here", rel)
            return
        if existing is not None:
            os.unlink(target)
            self._forget(rel)
        if member.isdir():
            os.mkdir(target, 0o700)
            self._dirs.append((target, member.mode, member.mtime))
        elif member.isreg():
            self._write(tar, member, target)
            self._files[name] = rel
        elif member.issym():
            os.symlink(member.linkname, target)
        else:
            os.link(self.root / self._files[member.linkname], target, follow_symlinks=False)
        self.report.written.append(target)

    def _parent(self, rel: str) -> Path | None:
        """The real directory ``rel`` goes in, made where missing; None if a symlink or file is in the way."""
        here = self.root
        for part in rel.split("/")[:-1]:
            here = here / part
            try:
                info = os.lstat(here)
            except FileNotFoundError:
                os.mkdir(here, 0o755)
                continue
            if not stat.S_ISDIR(info.st_mode):
                return None
        return here

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        """Write one regular file whole; on any failure it is removed (never a partial file)."""
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                data = tar.extractfile(member)
                left = member.size
                while left > 0 and data is not None:
                    chunk = data.read(min(CHUNK, left))
                    if not chunk:
                        raise tarfile.ReadError(f"{member.name}: the archive ends inside the file")
                    out.write(chunk)
                    left -= len(chunk)
                os.fchmod(out.fileno(), (member.mode & 0o755) | 0o600)
            os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise

    def _forget(self, rel: str) -> None:
        for name, local in list(self._files.items()):
            if local == rel:
                del self._files[name]

    def _set_dir_modes(self) -> None:
        for path, mode, mtime in reversed(self._dirs):
            try:
                os.chmod(path, (mode & 0o755) | 0o700)
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            except OSError:
                pass
