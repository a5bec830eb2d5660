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
* modes lose setuid/setgid/sticky and group/other write bits; owners are not set.

More entries, or more file bytes, than the outcome announces stop the extraction
with ``ArchiveRefused`` (what was written so far stays, and is listed).
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import ProducerError

CHUNK = 256 * 1024


class ArchiveRefused(ProducerError):
    """The archive is damaged or holds more entries or bytes than announced; extraction stopped."""


@dataclass
class ExtractReport:
    """What an extraction did: local paths written (files, directories, links) and entries skipped, with why."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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
) -> ExtractReport:
    """Extract the tar stream ``source`` into ``dest`` (created if missing) by the rules above.

    ``rename`` maps each entry name to its path relative to ``dest`` (None: not
    wanted, passed over silently). ``max_entries`` and ``max_file_bytes`` are what
    the archive was announced to hold. Raises ArchiveRefused.
    """
    return _Extraction(Path(dest), rename).run(source, max_entries, max_file_bytes)


class _Extraction:
    def __init__(self, dest: Path, rename: Callable[[str], str | None]) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.root = Path(os.path.realpath(dest))
        self.rename = rename
        self.report = ExtractReport()
        self._files: dict[str, str] = {}  # archive name -> local rel of the regular files written
        self._dirs: list[tuple[Path, int, float]] = []

    def run(self, source: BinaryIO, max_entries: int, max_file_bytes: int) -> ExtractReport:
        entries = file_bytes = 0
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                for member in tar:
                    entries += 1
                    if entries > max_entries:
                        raise ArchiveRefused(f"the archive holds more entries than the {max_entries} announced; stopped")
                    if member.isreg():
                        file_bytes += member.size
                        if file_bytes > max_file_bytes:
                            raise ArchiveRefused(
                                f"the archive holds more file bytes than the {max_file_bytes} announced; stopped"
                            )
                    self._entry(tar, member)
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveRefused(f"the archive is damaged: {exc}") from None
        finally:
            self._set_dir_modes()
        return self.report

    def _skip(self, name: str, why: str) -> None:
        self.report.skipped.append(f"{name[:200]!r}: {why}")

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
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            self._skip(name, "a device or special file")
            return
        parent = self._parent(rel)
        if parent is None:
            self._skip(name, "a directory on its way is a symlink or a file")
            return
        target = parent / rel.rsplit("/", 1)[-1]
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            if member.isdir():
                return
            self._skip(name, "would replace a directory")
            return
        if member.issym() and not link_stays_inside(rel, member.linkname):
            self._skip(name, f"a symlink to {member.linkname[:200]!r}, outside the destination")
            return
        if member.islnk() and member.linkname not in self._files:
            self._skip(name, f"a hard link to {member.linkname[:200]!r}, not a file extracted here")
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
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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
