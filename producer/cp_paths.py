"""The container paths a user types: ``dockrq cp ID:PATH``, ``submit --output PATH`` and
``--input LOCAL:PATH``, in the forms ``docker cp`` accepts, brought to the one normalised form the
wire contract holds (``schemas.check_container_path``: ``/work/out``).

``docker cp`` (docs.docker.com/reference/cli/docker/container/cp) takes container paths
relative to the container's ``/`` ("supplying the initial forward slash is optional":
``c:tmp/foo`` is ``c:/tmp/foo``) and a trailing ``/`` on a source asserting a directory. So:

* ``dockrq cp ID:work/out`` is ``ID:/work/out`` (relative to ``/``, as docker cp; not to the
  request's working directory);
* a trailing ``/`` (``ID:/work/out/``) names the directory: refused when the collected path
  is a file (as docker cp's "not a directory");
* repeated ``/`` and ``.`` parts are dropped (``/work//./out`` is ``/work/out``);
* refused, as usage errors (exit 125): an empty path, ``..`` parts (docker resolves them
  inside the container's filesystem, through its symlinks: not knowable from the archive),
  a trailing ``/.`` (docker cp's "the directory's contents": copy the directory instead),
  NUL, ``:`` but in ``dockrq cp``'s path (a request's paths never hold one; a name inside a
  collected directory may: ``dockrq cp ID:/out/a:b``, split at the first ``:`` as docker cp
  does), and over-long paths.

``--output`` and ``--input``'s container paths take the same forms but must be absolute
(there a relative path could as well mean the ``-w`` working directory).
"""

from __future__ import annotations

import posixpath

from schemas import check_container_path
from schemas.files import MAX_OUTPUT_PATH_BYTES, MAX_PATH_BYTES
from schemas.text import quoted_name


def container_path(
    value: str, *, relative_to_root: bool, root_ok: bool = False, max_bytes: int = MAX_PATH_BYTES, colon_ok: bool = False
) -> tuple[str, bool]:
    """``value`` normalised (module doc) and whether it asserted a directory (a trailing ``/``).

    ``relative_to_root``: a relative path is taken from ``/`` (``dockrq cp``); else refused.
    ``root_ok``: ``/`` itself is allowed (cp: all the outputs). Raises ValueError with a
    one-line reason. ``max_bytes``: the length bound (a request's paths: 1 KiB; a collected
    output's, for cp: Linux's PATH_MAX, 4096). ``colon_ok``: ``:`` allowed (cp: a collected name
    may hold one; a request's paths may not)."""
    if not isinstance(value, str) or not value:
        raise ValueError("the container path is empty")
    if "\x00" in value or (":" in value and not colon_ok):
        raise ValueError("a container path must not contain NUL or ':'")
    if not value.startswith("/"):
        if not relative_to_root:
            raise ValueError(f"must be an absolute container path: {quoted_name(value)}")
        value = "/" + value
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"'..' is not supported in a container path: {quoted_name(value)}")
    if len(parts) > 2 and parts[-1] == "." and value != "/.":
        raise ValueError(f"a trailing '/.' (a directory's contents) is not supported; name the directory: {quoted_name(value)}")
    asserts_dir = value.endswith("/") or value.endswith("/.")
    clean = posixpath.normpath(value)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        if not root_ok:
            raise ValueError("must name a path below '/', not the whole filesystem")
        return clean, True
    check_container_path(clean, max_bytes, colon_ok=colon_ok)  # the length bound
    return clean, asserts_dir


def cp_source(value: str) -> tuple[str, bool]:
    """``dockrq cp``'s ``PATH`` (relative to ``/``; ``/`` for all the outputs): the normalised
    path and whether a trailing ``/`` asserted a directory. ValueError for a malformed one."""
    return container_path(value, relative_to_root=True, root_ok=True, max_bytes=MAX_OUTPUT_PATH_BYTES, colon_ok=True)


def given_path(value: str) -> str:
    """``--output PATH`` or ``--input``'s container path: absolute, trailing ``/``, ``//`` and ``.``
    parts dropped. ValueError (one line) for a malformed one."""
    return container_path(value, relative_to_root=False)[0]
