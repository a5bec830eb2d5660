"""Typed errors of the Docker executor.

Callers branch on the type, not on message text. Each error that ends an
execution carries the ``code`` written to the outcome (``error.code``), so the
mapping from a Docker failure to what a producer sees lives in one place.
"""

from __future__ import annotations

import requests
from docker.errors import DockerException

#: The daemon failed or went away: what docker-py raises (DockerException), its HTTP
#: layer (requests), and the socket under it. Catch these around any daemon call.
DAEMON_ERRORS: tuple[type[BaseException], ...] = (
    DockerException,
    requests.exceptions.RequestException,
    ConnectionError,
    OSError,
)


class ExecutorError(Exception):
    """Base of every error the executor raises on purpose."""

    code = "executor_error"


class DockerUnavailableError(ExecutorError):
    """No Docker client could be built, or the daemon does not answer."""

    code = "docker_unavailable"


class ExecutionNotFound(ExecutorError, KeyError):
    code = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "execution not found"


class ExecutionAlreadyStarted(ExecutorError):
    code = "already_started"


class ExecutionAlreadyFinished(ExecutorError):
    code = "already_finished"


class ExecutionOwnedElsewhere(ExecutorError):
    """The execution's container exists, or is being created right now (Docker's 409 name
    conflict: the name derives from the executor and execution ids), and another live worker
    process owns it (its owner labels, ``worker.faults.owner``). Nothing is recorded and the
    container is not touched: the caller leaves the execution to its owner.

    ``container_id``: the container's id; ``owner``: the owner's ``dockrq.worker`` label, if any;
    ``state``: the container's Docker state (``created``, ``running``, ...)."""

    code = "owned_elsewhere"

    def __init__(self, message: str, *, container_id: str, owner: str | None, state: str = "") -> None:
        super().__init__(message)
        self.container_id = container_id
        self.owner = owner
        self.state = state


class RequestRejected(ExecutorError, ValueError):
    """The request is invalid or breaks the executor's policy; it never reached Docker."""

    code = "invalid_request"


class MountNotAllowed(RequestRejected):
    code = "mount_not_allowed"


class StartError(ExecutorError):
    """Starting failed after the execution was accepted: it is recorded as finished
    with status ``error`` and this code, so ``wait()`` still gives its result."""


class ImagePullError(StartError):
    code = "image_pull"


class ContainerCreateError(StartError):
    code = "container_create"


class GpuUnavailableError(StartError):
    code = "gpu_unavailable"


class StartFailed(StartError):
    """Starting failed for a reason none of the other errors names (an unexpected answer,
    a bug): the execution is still finished with status ``error``, never left pending."""

    code = "start_failed"


class DaemonError(StartError):
    """The daemon failed or went away in the middle of an execution."""

    code = "daemon_error"


class DaemonRestarted(DaemonError):
    """dockerd restarted under a running execution and its container did not survive."""

    code = "daemon_restarted"
