"""What the daemon's refusal of a container means, in the request's terms.

``POST /containers/create`` and ``/start`` refuse a container for reasons the
caller can fix in its request; dockrq names them instead of a generic
``container_create``. The daemon's own words are kept in the message:

- ``user_not_found``: ``docker run -u NAME[:GROUP]`` with a user (or group) the
  image's ``/etc/passwd`` (``/etc/group``) does not have. dockerd: ``unable to
  find user NAME: no matching entries in passwd file``.
- ``command_not_found``: the entrypoint/command's executable is not in the
  image: not on ``$PATH`` (``exec: "X": executable file not found in $PATH``), or
  no such file (``exec: "/x": stat /x: no such file or directory``). ``docker
  run`` exits 127 for it, as a shell does for a command it cannot find, and so do
  ``dockrq submit``/``wait`` (``producer.cli.exit_code_for``).
- ``command_not_executable``: it is there but cannot be executed (``exec: "X":
  permission denied``); ``docker run`` (and ``dockrq``) exit 126.

Anything else stays ``container_create`` (or ``gpu_unavailable``).

``PUT /containers/ID/archive`` (putting the request's inputs, after create and
before start) is refused for paths the image cannot take; the execution ends
``error`` with one of these instead of ``daemon_error`` and the daemon's HTTP 500:

- ``input_path_invalid``: an input's target cannot be made in the container's
  filesystem: a directory on its way is missing because a symlink in the image
  points where nothing is before start (``/etc/mtab`` -> ``/proc/mounts``; dockerd:
  ``Error processing tar file(exit status 1): open /etc/mtab/x: no such file or
  directory``), a directory on its way is a file (``not a directory``), a name is
  too long, or the extraction point is not a directory.
- ``input_path_read_only``: the target is read-only: ``container rootfs is marked
  read-only`` (``--read-only``), ``mounted volume is marked read-only`` or
  ``read-only file system`` (a read-only bind mount). The request's validation
  refuses those it can foresee (``schemas/placement.py``); a volume of the image
  (its ``VOLUME``) is not known before the worker has it.

Other failures (no space left, the container gone) stay ``daemon_error``.

Before that PUT, ``input_kind_refusal`` refuses (``input_path_invalid``) an input that would
replace what the container has at its path by something of the other kind: Docker's untar
(moby ``pkg/archive`` ``Unpack``/``createTarFile``) removes (``os.RemoveAll``) whatever is at
an entry's path unless both are directories, so a file put at ``/tmp`` would delete the
directory, through a writable bind mount on the host too. As ``docker cp`` (a file copied to
a directory goes into it; ``cannot copy directory`` onto a file) and dockrq's own output side,
a file never replaces a directory and a directory never replaces a file; a symlink is judged
by what it leads to (and is itself replaced, not followed).
"""

from __future__ import annotations

import re

from docker.errors import APIError

from .errors import ContainerCreateError, StartError
from .pathstat import Existing

_USER = re.compile(r"unable to find (user|group) (.+?): no matching entries in (?:passwd|group) file")
_EXEC = re.compile(
    r'exec: "((?:[^"\\]|\\.)*)": (executable file not found in \$PATH|(?:stat [^:]*: )?no such file or directory'
    r"|permission denied)"
)


class UserNotFound(ContainerCreateError):
    """``engine.user`` names a user or group the image does not have (``docker run -u``)."""

    code = "user_not_found"


class CommandNotFound(ContainerCreateError):
    """The executable of ``engine.entrypoint``/``engine.cmd`` (or the image's) is not in the image."""

    code = "command_not_found"


class CommandNotExecutable(ContainerCreateError):
    """The executable is in the image but cannot be executed (permission denied)."""

    code = "command_not_executable"


def explain_refusal(text: str) -> ContainerCreateError | None:
    """The error naming what the daemon's refusal ``text`` says, or None when it is none of the
    reasons above (the module doc lists them with the daemon's wording)."""
    user = _USER.search(text)
    if user is not None:
        kind, name = user.group(1), user.group(2)
        return UserNotFound(
            f"engine.user: the {kind} {name!r} was not found in the image (no matching entries in its "
            f"/etc/{'passwd' if kind == 'user' else 'group'}; docker: {user.group(0)})"
        )
    executable = _EXEC.search(text)
    if executable is not None:
        path, reason = executable.group(1), executable.group(2)
        if reason == "permission denied":
            return CommandNotExecutable(
                f"engine.entrypoint/cmd: the executable {path!r} cannot be executed in the container (permission denied)"
            )
        where = "in $PATH in the image" if "$PATH" in reason else "in the image (no such file or directory)"
        return CommandNotFound(f"engine.entrypoint/cmd: the executable {path!r} was not found {where}")
    return None


class InputPathInvalid(StartError):
    """An input's container path cannot be made in the container's filesystem (``PUT /archive``)."""

    code = "input_path_invalid"


class InputPathReadOnly(StartError):
    """An input's container path is on a read-only filesystem (rootfs or bind mount)."""

    code = "input_path_read_only"


_PUT_READ_ONLY = re.compile(r"container rootfs is marked read-only|mounted volume is marked read-only")
_PUT_ERRNO = re.compile(
    r"(?:\w+ )?(/[^:]*): (no such file or directory|not a directory|is a directory|file exists"
    r"|too many levels of symbolic links|file name too long|read-only file system)"
)
_WHY = {
    "no such file or directory": "a directory on its way is not there (e.g. a symlink of the image into /proc "
    "or /sys, which are mounted only at start)",
    "not a directory": "a directory on its way is a file (or a symlink to one) in the image",
    "is a directory": "a directory of the image is where a file would go",
    "file exists": "something of the image is in the way",
    "too many levels of symbolic links": "symlinks of the image on its way loop",
    "file name too long": "a name on its way is too long",
}


def explain_put_refusal(error: APIError, paths: list[str]) -> StartError | None:
    """The error naming the input path that the daemon's refusal of ``PUT /containers/ID/archive``
    (``error``) is about, or None when it is none of the reasons above (module doc)."""
    text = str(error.explanation or error)
    if error.status_code is None or error.status_code == 404 and "No such container" in text:
        return None
    if _PUT_READ_ONLY.search(text):
        return InputPathReadOnly(f"inputs: {', '.join(paths)}: read-only in the container (docker: {text})")
    found = _PUT_ERRNO.search(text)
    if found is None:
        if "extraction point is not a directory" in text:
            return InputPathInvalid(f"inputs: {', '.join(paths)}: the directory they go into is not a directory (docker: {text})")
        return None
    where, reason = found.group(1), found.group(2)
    named = [p for p in paths if where == p or where.startswith(p + "/") or p.startswith(where + "/")] or paths
    if reason == "read-only file system":
        return InputPathReadOnly(f"inputs: {', '.join(named)}: {where} is on a read-only file system (docker: {text})")
    return InputPathInvalid(
        f"inputs: {', '.join(named)} cannot be put into the container: {where}: {reason}: {_WHY[reason]} (docker: {text})"
    )


def _described(existing: Existing) -> str:
    if existing.kind != "symlink":
        return f"a {existing.kind}"
    return f"a symlink to a {existing.leads_to} ({existing.path} -> {existing.link})"


def input_kind_refusal(path: str, existing: Existing | None, input_kind: str) -> InputPathInvalid | None:
    """The refusal of the input ``path`` of kind ``input_kind`` (``"directory"``, ``"file"``,
    ``"symlink"``, ``"hard link"``) put where the container has ``existing`` (None: nothing,
    or a symlink leading nowhere), or None when it may go there: a directory onto a directory
    (merged into it, or replacing a symlink to one), anything but a directory onto anything but
    a directory (replacing it). Refused: a directory onto a file, fifo, socket or device (or a
    symlink to one), anything else onto a directory (or a symlink to one)."""
    if existing is None or existing.leads_to is None:
        return None
    there_is_dir = existing.leads_to == "directory"
    if (input_kind == "directory") == there_is_dir:
        return None
    there = _described(existing)
    if input_kind == "directory":
        return InputPathInvalid(
            f"inputs: {path}: {there} is there in the container and the input is a directory: a directory never "
            f"replaces a file (docker cp: cannot copy directory); name a path where no file is, "
            f"e.g. {path}.d"
        )
    return InputPathInvalid(
        f"inputs: {path}: {there} is there in the container and the input is a {input_kind}: it never replaces "
        f"a directory (Docker would delete the directory and all in it); to put it into the directory, name the "
        f"{input_kind}'s own path, e.g. {path.rstrip('/')}/NAME"
    )
