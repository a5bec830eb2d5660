"""Where a request's paths land in its container: bind mounts (``Mount``) and the
check that inputs and outputs go where Docker can put and read them.

``Mount`` is re-exported by ``schemas/execution.py`` (``from schemas.execution
import Mount`` keeps working).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from .container import TmpfsMount
from .engine import _no_nul


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class Mount(_Model):
    """A host path bound into the container; the worker's policy decides which are allowed."""

    source: Annotated[str, StringConstraints(min_length=1)]
    target: Annotated[str, StringConstraints(min_length=1)]
    read_only: bool = True

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if ":" in v:  # Docker's bind syntax is source:target:mode
            raise ValueError("must not contain ':'")
        return _no_nul(v, "mount paths")


def mount_target(path: str) -> str:
    """``path`` as the daemon mounts it: lexically cleaned like Go's ``filepath.Clean``
    (``/scratch/`` -> ``/scratch``, ``/a/../scratch`` -> ``/scratch``, ``//x`` -> ``/x``)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _within(path: str, target: str) -> bool:
    # Docker's volume/mounts parser HasResource: filepath.Rel(target, path) neither ".." nor "../..."
    return target == "/" or path == target or path.startswith(target + "/")


@dataclass(frozen=True)
class _Layer:
    """One mount over the container's root filesystem, in the request's terms."""

    target: str  # cleaned
    field: str  # where the request asked for it: "tmpfs /scratch", "mounts.0 (/data)"
    kind: Literal["tmpfs", "bind"]
    writable: bool


def _layers(tmpfs: Sequence[TmpfsMount], mounts: Sequence[Mount]) -> list[_Layer]:
    layers = [_Layer(mount_target(t.target), f"tmpfs {mount_target(t.target)}", "tmpfs", True) for t in tmpfs]
    layers += [
        _Layer(mount_target(m.target), f"mounts.{i} ({mount_target(m.target)})", "bind", not m.read_only)
        for i, m in enumerate(mounts)
    ]
    return layers


def _innermost(path: str, layers: list[_Layer]) -> _Layer | None:
    # The deepest mount holding ``path`` is what the path is on (Docker mounts them by depth,
    # the shallower first). On a tie a tmpfs wins: the stricter answer.
    holding = [layer for layer in layers if _within(path, layer.target)]
    return max(holding, key=lambda layer: (layer.target.count("/") if layer.target != "/" else 0, layer.kind == "tmpfs"), default=None)


def input_extraction_dir(path: str, tmpfs: Sequence[TmpfsMount], mounts: Sequence[Mount], read_only: bool) -> str:
    """The directory the worker puts the input ``path`` into (``PUT /containers/ID/archive?path=``):
    ``/`` normally; for a read-only container the target of the writable bind mount holding
    ``path`` (Docker checks the *extraction directory*, not the entries: on a read-only rootfs it
    takes only one inside a writable mount). ``check_inputs_placement`` has made sure there is one."""
    if not read_only:
        return "/"
    layer = _innermost(path, _layers(tmpfs, mounts))
    return "/" if layer is None else layer.target


# What Docker itself mounts when a container starts, over whatever the container's filesystem
# held there before (moby oci_linux.go's default mounts; daemon/container_operations_unix.go
# bind-mounts the three files it writes for --hostname, --add-host and --dns).
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev")
RUNTIME_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def runtime_problem(path: str) -> str | None:
    """Why a file put at the container path ``path`` before start would be lost to what Docker
    mounts or writes at start, or None. Checked for every input path and, because a directory's
    entries land there too (an input directory ``/etc`` holding ``hosts``), for every entry of an
    input archive: by the producer as it builds one, by the worker as it puts one in."""
    cleaned = mount_target(path)
    mount = next((m for m in RUNTIME_MOUNTS if _within(cleaned, m)), None)
    if mount is not None:
        return (
            f"{path} is at or under {mount}, which Docker mounts when the container starts, after inputs "
            f"are put, and hides them (put it elsewhere)"
        )
    if cleaned in RUNTIME_FILES:
        return f"{path} is written by Docker when the container starts (--hostname, --add-host, --dns set it), over any input"
    return None


def check_inputs_placement(
    paths: Sequence[str], tmpfs: Sequence[TmpfsMount], mounts: Sequence[Mount], read_only: bool
) -> None:
    """Refuse input container paths whose files Docker would lose or refuse; ValueError naming
    each. Mirrors the daemon (moby ``daemon/archive.go`` ``containerExtractToDir`` and
    ``archive_unix.go`` ``checkIfPathIsInAVolume``):

    * at or under what Docker mounts at start (``/proc``, ``/sys``, ``/dev``) or one of the
      files it writes then (``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf``): lost;
    * at or under a ``tmpfs`` target: the worker puts inputs after create and before start,
      into the directory the tmpfs mounted at start then hides (lost without an error);
    * inside a read-only bind mount: ``mounted volume is marked read-only`` / EROFS;
    * with ``read_only`` (``--read-only``), anywhere but inside a writable bind mount: ``container
      rootfs is marked read-only``;
    * inside a writable bind mount that sits within a read-only bind mount, with or without
      ``read_only``. dockerd 20.10 seen: ``mkdir .../merged/r/w: read-only file system`` when the
      read-only source lacks the inner mount point, else a 200 and the file nowhere to be seen at
      start; with ``read_only`` it tests the mounts holding the extraction directory in map order
      (``mounted volume is marked read-only`` when it picks the read-only one).
    """
    layers = _layers(tmpfs, mounts)
    problems = []
    for path in paths:
        layer = _innermost(path, layers)
        runtime = runtime_problem(path)
        if runtime is not None:
            problems.append(runtime)
        elif layer is not None and layer.kind == "tmpfs":
            problems.append(
                f"{path} is at or under {layer.field}: the tmpfs is mounted when the container starts, "
                f"after inputs are put, and hides them (put it outside the tmpfs)"
            )
        elif layer is not None and not layer.writable:
            problems.append(f"{path} is inside the read-only bind mount {layer.field}: Docker cannot put files there")
        elif layer is None and read_only:
            problems.append(
                f"{path} is on the read-only root filesystem (read_only): Docker puts files into a read-only "
                f"container only inside a writable bind mount (mounts with read_only false)"
            )
        elif layer is not None:
            outer = next((o for o in layers if o.kind == "bind" and not o.writable and _within(layer.target, o.target)), None)
            if outer is not None:
                problems.append(
                    f"{path} is inside {layer.field}, itself inside the read-only bind mount {outer.field}: Docker "
                    f"cannot put files there (it refuses them, or loses them without an error)"
                )
    if problems:
        raise ValueError("; ".join(problems))


def check_outputs_placement(paths: Sequence[str], tmpfs: Sequence[TmpfsMount], mounts: Sequence[Mount]) -> None:
    """Refuse output container paths at or under a ``tmpfs`` target (and not inside a bind mount
    deeper down): outputs are collected after the container has stopped, when its tmpfs mounts
    (and what they held) are gone, so they would come back empty. ValueError naming each."""
    layers = _layers(tmpfs, mounts)
    problems = []
    for path in paths:
        layer = _innermost(path, layers)
        if layer is not None and layer.kind == "tmpfs":
            problems.append(
                f"{path} is at or under {layer.field}: a tmpfs is gone once the container stops, before outputs "
                f"are collected (write it outside the tmpfs)"
            )
    if problems:
        raise ValueError("; ".join(problems))
