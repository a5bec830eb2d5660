"""Tar streams, one member at a time: checking an input archive and writing entries.

Pure stream code (no Docker, no Redis): archives are read with ``tarfile`` in
stream mode (``r|``) from a file object and written back out as header bytes,
data chunks and padding, so an archive of any size passes through in a few
chunks of memory. The format is the wire contract's (``schemas/files.py``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Collection, Iterator, Mapping
from typing import BinaryIO

from schemas import InputsSpec, entry_name
from schemas.files import MAX_PATH_BYTES
from schemas.placement import runtime_problem
from schemas.text import quoted_name

from .errors import StartError
from .pathstat import Existing
from .refusals import input_kind_refusal

BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
DATA_CHUNK = 256 * 1024
STREAM_BUFFER = 256 * 1024  # tarfile's read size in stream mode (its default, 10 KiB, costs many small copies)
TAR_ERRORS = (tarfile.TarError, EOFError, UnicodeError, ValueError)


class InputsRejected(StartError):
    """The input archive is missing, larger than announced or would write outside its
    targets: the execution ends ``rejected`` and its container never starts."""

    code = "invalid_inputs"
    status = "rejected"


def padding(size: int) -> bytes:
    """NUL bytes that round ``size`` up to the next 512-byte block."""
    return b"\0" * (-size % BLOCK)


def header(info: tarfile.TarInfo) -> bytes:
    """The bytes of ``info``'s header as written to the archive (a pax header first for long names)."""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def new_info(name: str, kind: bytes, *, size: int = 0, mode: int = 0o644, mtime: float = 0, linkname: str = "",
             uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind in tarfile.REGULAR_TYPES else 0
    info.mode = mode & 0o777
    info.mtime = max(0, int(mtime))
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    return info


def member_data(tar: tarfile.TarFile, member: tarfile.TarInfo, chunk: int = DATA_CHUNK) -> Iterator[bytes]:
    """A regular member's data in chunks (stream mode: read before the next member)."""
    source = tar.extractfile(member)
    if source is None:
        return
    left = member.size
    while left > 0:
        data = source.read(min(chunk, left))
        if not data:
            raise tarfile.ReadError(f"{member.name}: archive ends inside the file")
        left -= len(data)
        yield data


def plain_name(name: str, max_bytes: int = MAX_PATH_BYTES) -> str | None:
    """``name`` if it is a plain relative entry name (``a/b``), else None: empty,
    absolute, NUL, ``.``/``..``/empty components or longer than ``max_bytes``."""
    if not name or name.startswith("/") or "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > max_bytes:
        return None
    if any(part in ("", ".", "..") for part in name.split("/")):
        return None
    return name


class Coalesce:
    """Gathers small pieces (headers, small files) into chunks of about ``size`` bytes."""

    def __init__(self, size: int = DATA_CHUNK) -> None:
        self.size = size
        self._parts: list[bytes] = []
        self._length = 0

    def add(self, data: bytes) -> bytes | None:
        self._parts.append(data)
        self._length += len(data)
        return self.flush() if self._length >= self.size else None

    def flush(self) -> bytes | None:
        if not self._parts:
            return None
        out = b"".join(self._parts)
        self._parts, self._length = [], 0
        return out


class InputArchive:
    """Checks an input archive against its announcement while re-writing it for Docker.

    ``stream(source)`` yields the archive as Docker's ``put_archive`` should get it:
    every entry owned by ``uid``:``gid`` (the container's user), modes without
    setuid/setgid/sticky bits. It raises InputsRejected at the first entry that
    breaks a rule, so the upload is cut there and the container never starts:

    * names are plain relative paths (no ``/`` at the start, no ``..``, ``.`` or
      empty components) equal to one of ``spec.paths`` or below one, and not where
      Docker mounts or writes its own at start (``schemas.placement.runtime_problem``);
    * every entry below a target comes after a directory entry for its parent, so
      each level is a directory this archive made (Docker replaces a symlink the
      image had there by that directory) and nothing is written through a symlink;
    * a hard link names an earlier regular file of the archive; a name appears once;
    * only regular files, directories, symlinks and hard links (no devices, fifos,
      sparse files);
    * no more entries, file bytes or archive bytes than announced;
    * an input directory put where the container has a directory (``existing``) merges into
      it: its own directory entry is left out of the stream, so that directory keeps its owner
      and mode (its entries still go in; directories deeper down take Docker's untar: the
      entry's owner and mode, as with ``docker cp``);
    * given ``existing`` (``{container path: what the container has there}``, from
      ``pathstat.what_is_at``), a path's own entry is of the kind of what is there, else
      InputPathInvalid (``refusals.input_kind_refusal``) is raised before any byte of that
      entry is yielded: Docker's untar would remove what is there. The entries before it
      (other paths, earlier in the archive) are yielded whole first: Docker may write them.
    """

    def __init__(self, spec: InputsSpec, uid: int = 0, gid: int = 0,
                 existing: Mapping[str, Existing | None] | None = None) -> None:
        self.spec = spec
        self.uid, self.gid = uid, gid
        self.existing = {entry_name(path): (path, there) for path, there in (existing or {}).items()}
        self.targets = [entry_name(p) for p in spec.paths]
        self.entries = 0
        self.file_bytes = 0
        self._seen: set[str] = set()
        self._dirs: set[str] = set()
        self._files: set[str] = set()

    def stream(self, source: BinaryIO, only: Collection[str] | None = None, base: str = "/") -> Iterator[bytes]:
        """The checked archive for a ``PUT /containers/ID/archive?path=base``: every entry is
        checked, but only those of the container paths in ``only`` (all when None) are written,
        named relative to the directory ``base`` (itself one of them or above them; its own
        directory entry, which the mount already is, is left out)."""
        out = Coalesce()
        prefix = entry_name(base)
        try:
            with tarfile.open(fileobj=source, mode="r|", bufsize=STREAM_BUFFER) as tar:
                for member in tar:
                    info = self._check(member)
                    refusal = self._kind_refusal(info)  # checked in every PUT: refused at the earliest
                    if refusal is not None:
                        # Docker writes entries as they arrive: those before this one go whole
                        # (never a file cut short), nothing of this path goes.
                        rest = out.flush()
                        if rest:
                            yield rest
                        raise refusal
                    if only is not None and self._target_of(info.name) not in only:
                        continue
                    if info.isdir() and self._onto_directory(info.name):
                        continue  # merged into the directory there, which keeps its owner and mode
                    if prefix:
                        if info.name == prefix:
                            continue
                        info.name = info.name[len(prefix) + 1:]
                        if info.islnk() and info.linkname.startswith(prefix + "/"):
                            info.linkname = info.linkname[len(prefix) + 1:]  # Docker joins it to the extraction dir
                    piece = out.add(header(info))
                    if piece:
                        yield piece
                    if info.isreg():
                        for data in member_data(tar, member):
                            piece = out.add(data)
                            if piece:
                                yield piece
                        piece = out.add(padding(info.size))
                        if piece:
                            yield piece
        except TAR_ERRORS as exc:
            raise InputsRejected(f"inputs: not a readable tar archive: {exc}") from None
        if self.entries == 0:
            raise InputsRejected("inputs: the archive has no entries")
        out.add(END_OF_ARCHIVE)
        yield out.flush() or b""

    def _kind_refusal(self, info: tarfile.TarInfo) -> StartError | None:
        target = self.existing.get(info.name)
        if target is None:
            return None
        kind = "directory" if info.isdir() else "file" if info.isreg() else "symlink" if info.issym() else "hard link"
        return input_kind_refusal(target[0], target[1], kind)

    def _onto_directory(self, name: str) -> bool:
        # An input directory's own entry where the container has a directory: Docker's untar
        # (moby pkg/archive createTarFile) would chown and chmod that directory to the entry's
        # owner and mode (the container's user, the local mode), on the host for a bind mount.
        # Left out, as the extraction directory's own entry is (``stream``): its entries still go in.
        target = self.existing.get(name)
        return target is not None and target[1] is not None and target[1].kind == "directory"

    def _target_of(self, name: str) -> str:
        return "/" + next(t for t in self.targets if name == t or name.startswith(t + "/"))

    def _check(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        name = member.name.rstrip("/") if member.isdir() else member.name
        where = f"inputs: entry {quoted_name(name[:200])}"
        if plain_name(name) is None:
            raise InputsRejected(f"{where}: not a plain relative path (absolute, '..', '.' or empty parts)")
        target = next((t for t in self.targets if name == t or name.startswith(t + "/")), None)
        if target is None:
            raise InputsRejected(f"{where}: outside the announced paths ({', '.join(self.spec.paths)})")
        problem = runtime_problem("/" + name)  # an entry of a directory put at /etc or /
        if problem is not None:
            raise InputsRejected(f"inputs: {problem}")
        if name in self._seen:
            raise InputsRejected(f"{where}: appears twice")
        if name != target and name.rsplit("/", 1)[0] not in self._dirs:
            raise InputsRejected(f"{where}: its parent is not a directory entry earlier in the archive")
        self.entries += 1
        if self.entries > self.spec.entries:
            raise InputsRejected(f"inputs: more entries than the {self.spec.entries} announced")
        if member.isreg() and member.sparse is None:
            kind = tarfile.REGTYPE
            self.file_bytes += member.size
            if self.file_bytes > self.spec.bytes:
                raise InputsRejected(f"inputs: more file bytes than the {self.spec.bytes} announced")
            self._files.add(name)
        elif member.isdir():
            kind = tarfile.DIRTYPE
            self._dirs.add(name)
        elif member.issym():
            kind = tarfile.SYMTYPE
            if not member.linkname or "\x00" in member.linkname or len(member.linkname) > MAX_PATH_BYTES:
                raise InputsRejected(f"{where}: bad symlink target")
        elif member.islnk():
            kind = tarfile.LNKTYPE
            if member.linkname not in self._files:
                raise InputsRejected(f"{where}: hard link to {quoted_name(member.linkname[:200])}, not an earlier file of the archive")
        else:
            raise InputsRejected(f"{where}: not a regular file, directory, symlink or hard link")
        self._seen.add(name)
        return new_info(
            name, kind, size=member.size, mode=member.mode, mtime=member.mtime, linkname=member.linkname,
            uid=self.uid, gid=self.gid,
        )
