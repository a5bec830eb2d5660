"""``dockrq submit``'s ``docker run`` flags beyond image, command and limits.

Each flag keeps ``docker run``'s name and syntax and becomes one request field
(``schemas/container.py``); the schema then checks the value and names the field
when it is wrong, so ``--cap-add FOO`` fails as ``cap_add: 'FOO' is not a Linux
capability`` before anything is enqueued:

======================================  ===========================================
flag                                    request field
======================================  ===========================================
``-u/--user uid[:gid]|name[:group]``    ``engine.user``
``--read-only``                         ``read_only``
``--tmpfs PATH[:size=64m]``             ``tmpfs: [{"target", "size"}]``
``--shm-size 256m``                     ``resources.shm_size``
``--cap-add CAP`` / ``--cap-drop CAP``  ``cap_add`` / ``cap_drop`` (``ALL`` works)
``--ulimit name=soft[:hard]``           ``ulimits: [{"name", "soft", "hard"}]``
``--init``                              ``init``
``--stop-signal SIG``                   ``stop_signal``
``--stop-timeout S``                    ``stop_timeout``
``-l/--label k=v``                      ``labels``
``--env-file FILE``                     ``engine.env`` (``-e`` overrides it)
``-i/--interactive``                    ``stdin_base64`` (this process's stdin)
``--rm``                                none: containers are always removed
======================================  ===========================================
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable
from typing import IO, Any

import click

from schemas.defaults import MAX_STDIN_BYTES
from schemas.text import quoted_name

from .errors import InvalidRequest

# docker run's tmpfs defaults: naming them changes nothing, so a pasted docker line still works.
_TMPFS_DEFAULT_OPTIONS = frozenset({"rw", "noexec", "nosuid", "nodev"})

RUN_FLAG_NAMES = (
    "user", "read_only", "tmpfs", "shm_size", "cap_add", "cap_drop", "ulimit", "init", "stop_signal",
    "stop_timeout", "label", "env_file", "interactive", "rm",
)


def run_flag_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The click options of this module's flags, for ``dockrq submit``."""
    for decorator in reversed(
        [
            click.option("-u", "--user", metavar="UID[:GID]", help="User (uid[:gid] or name[:group]) the command runs as."),
            click.option("--read-only", is_flag=True, default=None, help="Mount the container's root filesystem read-only."),
            click.option("--tmpfs", multiple=True, metavar="PATH[:size=64m]", help="Mount a tmpfs at PATH; repeatable."),
            click.option("--shm-size", metavar="SIZE", help="Size of /dev/shm, e.g. 1g (Docker's default: 64m)."),
            click.option("--cap-add", multiple=True, metavar="CAP",
                         help="Add a Linux capability (the worker must allow it: DOCKRQ_ALLOWED_CAPS); repeatable."),
            click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a Linux capability, or ALL; repeatable."),
            click.option("--ulimit", multiple=True, metavar="NAME=SOFT[:HARD]", help="ulimit, e.g. nofile=1024:2048; repeatable."),
            click.option("--init", is_flag=True, default=None, help="Run docker-init as PID 1 (forwards signals, reaps zombies)."),
            click.option("--stop-signal", metavar="SIGNAL", help="Signal that stops the container (default SIGTERM)."),
            click.option("--stop-timeout", type=click.IntRange(min=0), metavar="S",
                         help="Seconds between the stop signal and SIGKILL (the worker bounds it)."),
            click.option("-l", "--label", multiple=True, metavar="K=V", help="Container label (not in 'dockrq.'); repeatable."),
            click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
                         help="Read environment variables from FILE (K=V lines); -e overrides; repeatable."),
            click.option("-i", "--interactive", is_flag=True,
                         help=f"Give this command's stdin (read to EOF, at most {MAX_STDIN_BYTES // 1024}k) to the container."),
            click.option("--rm", is_flag=True, help="Accepted for docker run habits: containers are always removed."),
        ]
    ):
        fn = decorator(fn)
    return fn


def apply_run_flags(request: dict[str, Any], options: dict[str, Any], stdin: IO[bytes] | None = None) -> dict[str, Any]:
    """``request`` (a plain dict from the other flags) with this module's flags added; only what
    was given, so the schema's defaults apply. Raises InvalidRequest naming the field."""
    engine = request.setdefault("engine", {})
    resources = request.setdefault("resources", {})
    if options.get("env_file"):
        engine["env"] = {**read_env_files(options["env_file"]), **engine.get("env", {})}
    if options.get("user") is not None:
        engine["user"] = options["user"]
    if options.get("shm_size") is not None:
        resources["shm_size"] = options["shm_size"]
    if options.get("read_only"):
        request["read_only"] = True
    if options.get("init"):
        request["init"] = True
    if options.get("tmpfs"):
        request["tmpfs"] = [_tmpfs(i, v) for i, v in enumerate(options["tmpfs"])]
    for name in ("cap_add", "cap_drop"):
        if options.get(name):
            request[name] = list(options[name])
    if options.get("ulimit"):
        request["ulimits"] = [_ulimit(i, v) for i, v in enumerate(options["ulimit"])]
    for name in ("stop_signal", "stop_timeout"):
        if options.get(name) is not None:
            request[name] = options[name]
    if options.get("label"):
        request["labels"] = dict(_label(v) for v in options["label"])
    if options.get("interactive"):
        request["stdin_base64"] = read_stdin(sys.stdin.buffer if stdin is None else stdin)
    return request


def read_stdin(stream: IO[bytes], limit: int = MAX_STDIN_BYTES) -> str:
    """All of ``stream`` (to EOF) in base64; InvalidRequest when it holds more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InvalidRequest(
            f"stdin_base64: more than {limit} bytes ({limit // 1024}k) on stdin for -i, the most a request carries; "
            f"give large input through a mount (-v) instead"
        )
    return base64.b64encode(data).decode("ascii")


def read_env_files(paths: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Variables of ``docker run --env-file`` files, in order (a later file wins).

    Docker's format: one ``K=V`` per line, taken literally (no quotes, no expansion);
    blank lines and lines starting with ``#`` are skipped; a line ``K`` alone passes
    this process's ``$K`` (skipped when unset). InvalidRequest names the file and line.
    """
    env: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise InvalidRequest(f"engine.env: cannot read --env-file {quoted_name(path)}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidRequest(f"engine.env: --env-file {quoted_name(path)} is not UTF-8 text") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not name or any(c.isspace() for c in name):
                raise InvalidRequest(f"engine.env: --env-file {quoted_name(path)} line {number}: {name!r} is not a variable name")
            if sep:
                env[name] = value
            elif name in os.environ:
                env[name] = os.environ[name]
    return env


def _tmpfs(index: int, value: str) -> dict[str, Any]:
    target, _, opts = value.partition(":")
    mount: dict[str, Any] = {"target": target}
    for opt in filter(None, opts.split(",")):
        key, sep, arg = opt.partition("=")
        if key == "size" and sep:
            mount["size"] = arg
        elif opt not in _TMPFS_DEFAULT_OPTIONS:
            raise InvalidRequest(
                f"tmpfs.{index}: option {opt!r} of {value!r} is not supported (PATH[:size=64m]; "
                f"tmpfs is always rw,noexec,nosuid,nodev)"
            )
    return mount


def _ulimit(index: int, value: str) -> dict[str, Any]:
    name, sep, limits = value.partition("=")
    soft, _, hard = limits.partition(":")
    try:
        ulimit: dict[str, Any] = {"name": name, "soft": int(soft)}
        if hard:
            ulimit["hard"] = int(hard)
    except ValueError:
        sep = ""
    if not sep:
        raise InvalidRequest(f"ulimits.{index}: {value!r} is not NAME=SOFT[:HARD] (e.g. nofile=1024:2048)")
    return ulimit


def _label(value: str) -> tuple[str, str]:
    key, _, val = value.partition("=")  # docker run -l k alone is k with an empty value
    return key, val
