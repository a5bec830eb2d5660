"""Who owns the inputs: the container's user, resolved as dockerd resolves it at start.

``docker run -u NAME[:GROUP]`` (or the image's ``USER``) is resolved by dockerd when the
container *starts*, against the ``/etc/passwd`` and ``/etc/group`` of the container's
filesystem at that moment (moby's ``user.GetExecUserPath``). dockrq puts the inputs in
after create and before start, so that filesystem is the image's with the inputs over it:
an input at ``/etc/passwd`` or ``/etc/group`` (itself, or inside an input directory ``/etc``
or ``/``) replaces the image's file. ``container_user`` resolves the user against exactly
that, with dockerd's rules:

* no user: root, 0:0;
* a name: the ``passwd`` entry's uid and primary gid; not there (or no ``passwd`` at all):
  ``UserNotFound`` (``user_not_found``), as dockerd refuses the start (``unable to find
  user NAME: no matching entries in passwd file``); never a silent fall-back to root;
* a number: that uid, with the primary gid of the ``passwd`` entry of that uid if there is
  one, else gid 0;
* ``:GROUP``: a number is that gid; a name is the ``group`` entry's gid, and a missing one is
  ``UserNotFound`` (``unable to find group``).

A ``passwd``/``group`` that cannot be read before start (an input that is not a regular
file, or one over ``USER_DB_MAX_BYTES``) is ``UserNotFound`` too, naming why: the owner
is never guessed. A daemon error reading the image's file is a ``DaemonError``.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from schemas import ChunkReader, InputsSpec

from .archive import DATA_CHUNK, STREAM_BUFFER, TAR_ERRORS, member_data
from .client import DockerClient
from .errors import DAEMON_ERRORS, DaemonError
from .refusals import UserNotFound

PASSWD, GROUP = "/etc/passwd", "/etc/group"
USER_DB_MAX_BYTES = 1024 * 1024
MAX_SYMLINKS = 8  # an image's /etc/passwd that is a symlink is followed (dockerd reads it through)


@dataclass(frozen=True)
class UserDb:
    """One of ``/etc/passwd``/``/etc/group`` as the container will have it: its text (None:
    the file is absent, an empty database to dockerd), where it comes from, and, when it
    cannot be read before start, why (``unreadable``)."""

    path: str
    text: str | None
    source: str  # "the image" or "an input"
    unreadable: str | None = None

    def find(self, key: str, *, column: int, ids: int) -> list[str] | None:
        """The line (split on ':') whose ``column`` is ``key`` and whose ``ids`` numeric fields
        from the third on are numbers; raises UserNotFound when the file cannot be read."""
        if self.unreadable is not None:
            raise UserNotFound(f"user: {self.path} ({self.source}) cannot be read before start: {self.unreadable}")
        for line in (self.text or "").splitlines():
            fields = line.split(":")
            if len(fields) >= 2 + ids + 1 and fields[column] == key and all(f.isdigit() for f in fields[2: 2 + ids]):
                return fields
        return None


def container_user(
    client: DockerClient, container_id: str, inputs: InputsSpec | None = None,
    open_inputs: Callable[[], BinaryIO] | None = None,
) -> tuple[int, int]:
    """(uid, gid) the created container's processes will run as: its ``Config.User`` resolved
    against its ``/etc/passwd`` and ``/etc/group`` as they will be at start (an input's over the
    image's; ``inputs``/``open_inputs`` give the request's input archive). Rules, errors: module doc."""
    user = (client.inspect(container_id).get("Config") or {}).get("User") or ""
    name, _, group = user.partition(":")
    if not name and not group:
        return 0, 0
    from_inputs = input_dbs(inputs, open_inputs) if inputs is not None and open_inputs is not None else {}

    def db(path: str) -> UserDb:
        return from_inputs.get(path) or image_db(client, container_id, path)

    uid = gid = 0
    if name:
        numeric = name.isdigit()
        entry = db(PASSWD).find(name, column=2 if numeric else 0, ids=2)
        if entry is not None:
            uid, gid = int(entry[2]), int(entry[3])
        elif numeric:
            uid = int(name)
        else:
            raise UserNotFound(_not_found("user", name, db(PASSWD)))
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = db(GROUP).find(group, column=0, ids=1)
            if entry is None:
                raise UserNotFound(_not_found("group", group, db(GROUP)))
            gid = int(entry[2])
    return uid, gid


def _not_found(kind: str, name: str, db: UserDb) -> str:
    where = f"no {db.path} in the container" if db.text is None else f"no matching entries in {db.path}, {db.source}'s"
    return (f"engine.user: the {kind} {name!r} was not found in the container ({where}; docker: unable to find "
            f"{kind} {name}: no matching entries in {'passwd' if kind == 'user' else 'group'} file)")


def _covers(paths: list[str], db: str) -> bool:
    return any(db == p or db.startswith(p.rstrip("/") + "/") for p in paths)


def input_dbs(inputs: InputsSpec, open_inputs: Callable[[], BinaryIO]) -> dict[str, UserDb]:
    """``{path: UserDb}`` for ``/etc/passwd`` and ``/etc/group`` among the inputs (one pass over
    the archive, only when an announced path covers them); the archive's own rules are checked
    when it is put, so an unreadable archive here just leaves the image's files."""
    wanted = {entry: path for path in (PASSWD, GROUP) if _covers(inputs.paths, path) for entry in [path.lstrip("/")]}
    if not wanted:
        return {}
    found: dict[str, UserDb] = {}
    source = open_inputs()
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=STREAM_BUFFER) as tar:
            for member in tar:
                path = wanted.get(member.name)
                if path is None:
                    continue
                if not member.isreg():
                    found[path] = UserDb(path, None, "an input", "it is not a regular file")
                elif member.size > USER_DB_MAX_BYTES:
                    found[path] = UserDb(path, None, "an input", f"it is over {USER_DB_MAX_BYTES} bytes")
                else:
                    text = b"".join(member_data(tar, member)).decode("utf-8", "replace")
                    found[path] = UserDb(path, text, "an input")
    except TAR_ERRORS:
        pass
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return found


def image_db(client: DockerClient, container_id: str, path: str) -> UserDb:
    """``path`` as the created container has it (the image's), read through ``GET /archive``,
    following symlinks inside the container; absent: ``text`` None."""
    from .files import archive_stream  # files imports this module

    for _ in range(MAX_SYMLINKS):
        try:
            response = archive_stream(client, container_id, path)
        except DAEMON_ERRORS as exc:
            raise DaemonError(f"user: reading {path} from the container failed: {exc}") from None
        if response is None:
            return UserDb(path, None, "the image")
        try:
            with tarfile.open(fileobj=ChunkReader(response.iter_content(DATA_CHUNK)), mode="r|") as tar:
                member = tar.next()
                if member is not None and member.issym():
                    path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
                    continue
                if member is None or not member.isreg():
                    return UserDb(path, None, "the image", "it is not a regular file")
                if member.size > USER_DB_MAX_BYTES:
                    return UserDb(path, None, "the image", f"it is over {USER_DB_MAX_BYTES} bytes")
                return UserDb(path, b"".join(member_data(tar, member)).decode("utf-8", "replace"), "the image")
        except TAR_ERRORS as exc:
            return UserDb(path, None, "the image", f"its archive is unreadable ({exc})")
        finally:
            response.close()
    return UserDb(path, None, "the image", "too many levels of symbolic links")
