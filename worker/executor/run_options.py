"""The ``docker run`` options of a request as Docker Engine API container settings.

``build_container_spec`` (spec.py) makes the container dockrq always makes (no
privilege, ``no-new-privileges``, its labels, limits, mounts); this adds what
the request asked for on top, each under Docker's own name, so the daemon reads
them exactly as it reads ``docker run``'s flags:

=================  ========================================================
request            Engine API (``POST /containers/create``)
=================  ========================================================
engine.user        ``Config.User``                     (``--user``)
stdin_base64       ``Config.OpenStdin`` + ``StdinOnce``  (``--interactive``)
stop_signal        ``Config.StopSignal``               (``--stop-signal``)
stop_timeout       ``Config.StopTimeout``              (``--stop-timeout``)
labels             ``Config.Labels`` (dockrq's own win)  (``--label``)
read_only          ``HostConfig.ReadonlyRootfs``       (``--read-only``)
tmpfs              ``HostConfig.Tmpfs``                (``--tmpfs``)
resources.shm_size ``HostConfig.ShmSize``              (``--shm-size``)
cap_add/cap_drop   ``HostConfig.CapAdd``/``CapDrop``   (``--cap-add``/``--cap-drop``)
ulimits            ``HostConfig.Ulimits``              (``--ulimit``)
init               ``HostConfig.Init``                 (``--init``: docker-init is PID 1)
=================  ========================================================

Only what a request asks for is set, so the daemon's own defaults (a 64 MiB
``/dev/shm``, its default capability set, its ``init`` setting) apply otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from docker.types import Ulimit

from schemas import ExecutionRequest


@dataclass(frozen=True)
class RunOptions:
    """Extra keyword arguments for ``create_container`` (``create``) and ``create_host_config``."""

    create: dict[str, Any] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)


def run_options(request: ExecutionRequest) -> RunOptions:
    """What the request's docker run options add to its container; pure, no Docker call."""
    create: dict[str, Any] = {}
    host: dict[str, Any] = {}
    if request.engine.user is not None:
        create["user"] = request.engine.user
    if request.stdin_base64 is not None:
        # StdinOnce: the container's stdin closes when the attached writer closes its side,
        # so ``cat`` sees EOF after the input (docker run -i sets it for the same reason).
        create["stdin_open"] = True
        create["stdin_once"] = True
    if request.stop_signal is not None:
        create["stop_signal"] = request.stop_signal
    if request.stop_timeout is not None:
        create["stop_timeout"] = request.stop_timeout
    if request.read_only:
        host["read_only"] = True
    if request.tmpfs:
        host["tmpfs"] = {t.target: ("" if t.size is None else f"size={t.size}") for t in request.tmpfs}
    if request.resources.shm_size is not None:
        host["shm_size"] = request.resources.shm_size
    if request.cap_add:
        host["cap_add"] = list(request.cap_add)
    if request.cap_drop:
        host["cap_drop"] = list(request.cap_drop)
    if request.ulimits:
        host["ulimits"] = [Ulimit(name=u.name, soft=u.soft, hard=u.effective_hard) for u in request.ulimits]
    if request.init:
        host["init"] = True
    return RunOptions(create, host)
