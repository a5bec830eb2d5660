"""An execution while dockerd goes away: a restart, an upgrade, a shutdown.

A start cut by the daemon is made again once it answers (``lost_connection`` tells a
lost connection from a refusal); a container's ``wait`` cut by it is resumed, and the
container followed if it survived (``live-restore``), for at most
``DAEMON_RECOVERY_SECONDS``. A daemon that stops containers as it shuts down (without
``live-restore`` it stops every one first) is told apart from the container's own
signal death, so such an execution ends ``error``/``daemon_restarted``, not ``failed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests

from schemas import ExecutionStatus
from schemas.causes import caused_by

from .client import DockerClient
from .errors import DAEMON_ERRORS, DaemonError, DaemonRestarted

log = logging.getLogger(__name__)

#: How long a start or a wait cut by the daemon waits for it to come back (seconds).
DAEMON_RECOVERY_SECONDS = 60.0


def lost_connection(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is the daemon's connection failing, not a refusal."""
    return caused_by(exc, requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError)


def wait_surviving_daemon(
    client: DockerClient, container_id: str, execution_id: str, stop_reason: Callable[[], ExecutionStatus | None]
) -> tuple[int | None, DaemonError | None]:
    """The container's exit code (``POST /containers/{id}/wait``), or the daemon error that
    ended the execution. ``stop_reason()``: the stop this executor asked for, if any (a stop of
    ours is not the restart's doing)."""
    while True:
        try:
            exit_code = client.wait(container_id)
            if not _stopped_by_daemon_shutdown(client, exit_code, stop_reason()):
                return exit_code, None
            log.warning("execution %s: the Docker daemon is shutting down and stopped the container", execution_id)
        except DAEMON_ERRORS as exc:
            log.warning("execution %s: lost the daemon while waiting: %s", execution_id, exc)
        deadline = time.monotonic() + DAEMON_RECOVERY_SECONDS
        while not client.ping():
            if time.monotonic() > deadline:
                return None, DaemonError("the Docker daemon did not come back")
            time.sleep(0.5)
        try:
            state = client.inspect(container_id)["State"]
        except DAEMON_ERRORS:
            state = None
        if state is None:
            return None, DaemonRestarted("the Docker daemon restarted and the container is gone")
        if not state.get("Running"):
            if stop_reason() is None and state.get("ExitCode") in (None, 255, 137, 143):
                # killed by the restart, not by its own doing
                return None, DaemonRestarted("the Docker daemon restarted and stopped the container")
            return int(state.get("ExitCode", -1)), None


def _stopped_by_daemon_shutdown(client: DockerClient, exit_code: int, stop_reason: ExecutionStatus | None) -> bool:
    """A signal death nobody here asked for, while the daemon stops taking connections:
    dockerd is going down (without live-restore it stops every container first)."""
    if exit_code < 128 or stop_reason is not None:
        return False
    accepts = getattr(client, "accepts_connections", None)
    return accepts is not None and not accepts()
