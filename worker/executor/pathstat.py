"""What is at a container path before the container starts: Docker's ``HEAD /containers/ID/archive``.

``HEAD /containers/ID/archive?path=P`` (what ``docker cp`` asks before it copies) answers
200 with the header ``X-Docker-Container-Path-Stat``: base64 JSON ``{"name", "size",
"mode", "mtime", "linkTarget"}``, ``mode`` Go's ``os.FileMode`` bits; 404 when nothing is
there. The daemon resolves every component but the last in the container's scope and
``lstat``s the last (moby ``daemon/archive.go`` ``containerStatPath``), and mounts the
container's volumes and bind mounts for it, so a path inside ``-v SRC:DST`` is SRC's.

docker-py has no call for it (its ``get_archive`` reads the same header from a GET, with
``docker.utils.decode_json_header``, reused here); docker-py's ``APIClient`` is a requests
``Session``, so this is its ``head``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from docker.utils import decode_json_header

from .errors import DAEMON_ERRORS, DaemonError

if TYPE_CHECKING:  # client.py imports refusals.py, which takes Existing from here
    from .client import DockerClient

Kind = Literal["directory", "file", "symlink", "fifo", "socket", "device"]

# Go os.FileMode type bits (io/fs): ModeDir, ModeSymlink, ModeDevice, ModeNamedPipe, ModeSocket.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
# Linux's MAXSYMLINKS (path_resolution(7)): a longer chain is a loop, leading nowhere.
MAX_SYMLINK_HOPS = 40
STAT_HEADER = "X-Docker-Container-Path-Stat"


def kind_of(mode: int) -> Kind:
    """The kind of an ``os.FileMode`` (``mode`` of the stat header)."""
    if mode & MODE_DIR:
        return "directory"
    if mode & MODE_SYMLINK:
        return "symlink"
    if mode & MODE_NAMED_PIPE:
        return "fifo"
    if mode & MODE_SOCKET:
        return "socket"
    if mode & MODE_DEVICE:
        return "device"
    return "file"


@dataclass(frozen=True)
class Existing:
    """What the container has at ``path`` (``lstat``: a symlink is a symlink).

    ``link``: a symlink's target as stored; ``leads_to``: for a symlink, the kind at the end
    of its chain (followed in the container, as ``docker cp`` follows a destination symlink),
    None when it leads nowhere (dangling, e.g. ``/etc/mtab`` -> ``/proc/mounts`` before the
    start, or a loop); for anything else its own kind.
    """

    path: str
    kind: Kind
    link: str = ""
    leads_to: Kind | None = None


def stat_path(client: DockerClient, container_id: str, path: str) -> tuple[Kind, str] | None:
    """(kind, link target) of the container path ``path``, or None when the daemon says it is
    not there (404) or cannot say (another status: the PUT that follows names the reason).

    Raises DaemonError when the daemon cannot be reached."""
    url = client.api._url("/containers/{0}/archive", container_id)
    try:
        response = client.api.head(url, params={"path": path}, timeout=client.api.timeout)
    except DAEMON_ERRORS as exc:
        raise DaemonError(f"looking at the inputs' container paths failed: {exc}") from exc
    response.close()
    encoded = response.headers.get(STAT_HEADER)
    if response.status_code != 200 or not encoded:
        return None
    try:
        stat = decode_json_header(encoded)
        return kind_of(int(stat["mode"])), str(stat.get("linkTarget") or "")
    except (ValueError, TypeError, KeyError):  # not the daemon's header: as if it could not say
        return None


def what_is_at(client: DockerClient, container_id: str, path: str) -> Existing | None:
    """What the created container has at ``path``, a symlink followed to where it leads; None
    when nothing is there. Raises DaemonError (``stat_path``)."""
    found = stat_path(client, container_id, path)
    if found is None:
        return None
    kind, link = found
    if kind != "symlink":
        return Existing(path, kind, link, kind)
    leads_to: Kind | None = None
    at, target = path, link
    for _ in range(MAX_SYMLINK_HOPS):
        # a relative target is relative to the link's directory; cleaned as Go's filepath.Join
        at = "/" + posixpath.normpath(posixpath.join(posixpath.dirname(at), target)).lstrip("/")
        hop = stat_path(client, container_id, at)
        if hop is None:
            break
        if hop[0] != "symlink":
            leads_to = hop[0]
            break
        target = hop[1]
    return Existing(path, kind, link, leads_to)
