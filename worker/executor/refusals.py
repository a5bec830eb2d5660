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
"""

from __future__ import annotations

import re

from .errors import ContainerCreateError

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
