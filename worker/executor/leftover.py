"""Following a container this handler did not start: found by labels, read to its end.

A container of an execution carries ``dockrq.executor`` and
``dockrq.execution`` (spec.py); its name is only derived from them, and other
versions derived it differently. Adoption therefore looks the execution up by
those two labels (``owned.owned_containers``, the one listing of dockrq's
containers) before creating anything, so a leftover of an earlier dockrq (or
one renamed by hand) is followed instead of a second container being started
for the same execution.

Reading a leftover's output has two traps, both from how dockerd attaches:
attaching to a container that has already stopped never ends (the daemon waits
for a start that will not come), and an attach made while it still runs can be
hooked up only after it exited, with the same effect. A stopped leftover is
therefore read from its log (``GET /containers/{id}/logs``, no follow), and a
late attach that stays silent after the exit is completed from the log too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from .client import Attached, DockerClient
from .errors import DAEMON_ERRORS
from .owned import OwnedContainer, owned_containers
from .spec import LABEL_EXECUTION, LABEL_EXECUTOR
from .threads import Ran

# Which leftover to follow when there are several: one that runs (it is doing the
# work), then one never started, then one that has ended; the newest of a kind.
_RANK = {"running": 0, "paused": 0, "restarting": 0, "created": 1, "exited": 2, "dead": 3}
# States docker reports (``State.Status``) in which the container's output is complete
# and attaching would wait forever for a start.
ENDED_STATES = frozenset({"exited", "dead"})

Frames = Iterator[tuple[str, bytes]]

log = logging.getLogger(__name__)

# Once a stopped container's late attach has delivered nothing for this long (seconds),
# the rest of its output is read from its log.
ATTACH_IDLE_SECONDS = 1.0


def find_leftover(client: DockerClient, labels: dict[str, str]) -> OwnedContainer | None:
    """The container labelled with ``labels``' executor and execution ids (whatever its name),
    or None; of several, one that runs, then one never started, then one that ended, the
    newest of a kind. Raises DAEMON_ERRORS."""
    executor_id, execution_id = labels[LABEL_EXECUTOR], labels[LABEL_EXECUTION]
    found = [c for c in owned_containers(client, execution_id) if c.executor_id == executor_id and c.state in _RANK]
    if not found:
        return None
    return min(found, key=lambda c: (_RANK[c.state], -c.created))


class LogReplay(Attached):
    """The whole output of a container, from its log: Docker's stdcopy framing (as attach)
    in a plain chunked HTTP body, which ends at the end of the log."""

    def __init__(self, response: requests.Response) -> None:  # noqa: D107 - no super(): no hijack here
        self._response = response
        self._fp = _BodyReader(response.raw)
        try:
            self._sock = getattr(response.raw._fp.fp.raw, "_sock", None)
        except AttributeError:
            self._sock = None


class _BodyReader:
    """``read``/``read1`` over a urllib3 response body (it undoes the chunked encoding)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def read(self, n: int) -> bytes:
        return self._raw.read(n)

    read1 = read


def replay(client: DockerClient, container_id: str) -> LogReplay:
    """``GET /containers/{id}/logs?stdout=1&stderr=1`` (no follow). Raises DAEMON_ERRORS."""
    api = client.api
    response = api._get(
        api._url("/containers/{0}/logs", container_id),
        params={"stdout": 1, "stderr": 1, "follow": 0}, stream=True, timeout=None,
    )
    api._raise_for_status(response)
    return LogReplay(response)


def skipping(frames: Frames, skip: dict[str, int]) -> Frames:
    """``frames`` minus the first ``skip[stream]`` bytes of each stream."""
    for stream, data in frames:
        left = skip.get(stream, 0)
        if left:
            if len(data) <= left:
                skip[stream] = left - len(data)
                continue
            skip[stream] = 0
            data = data[left:]
        yield stream, data


def settle_late_attach(
    reader: threading.Thread | Ran,
    received: dict[str, int],
    idle: float,
    budget: float,
    read_rest: Callable[[dict[str, int]], None],
) -> None:
    """The container has stopped and ``reader`` follows an attach made while it ran. Wait
    while output still arrives (``received``: bytes per stream so far); once none came for
    ``idle`` seconds, call ``read_rest`` with what arrived, which cuts the attach and reads
    the rest from the log (both replay the same log in the same order per stream)."""
    deadline = time.monotonic() + budget
    last = -1
    while reader.is_alive() and time.monotonic() < deadline:
        seen = sum(received.values())
        if seen == last:
            read_rest(dict(received))
            return
        last = seen
        reader.join(idle)


def open_output(client: DockerClient, container_id: str, status: str, *, created: bool, stdin: bool) -> Attached:
    """How to read the output of a container in Docker state ``status``: an ended one from its
    log (complete; an attach would never end), else by attaching (replaying what it already
    wrote unless ``created`` now; ``stdin`` also carries its input). Raises DAEMON_ERRORS."""
    if status in ENDED_STATES:
        return replay(client, container_id)
    return client.attach(container_id, logs=not created, stdin=stdin)


def finish_late_attach(
    client: DockerClient,
    container_id: str,
    reader: threading.Thread | Ran,
    received: dict[str, int],
    detach: Callable[[], None],
    read: Callable[[Frames], None],
    budget: float,
) -> None:
    """The container stopped and ``reader`` follows an attach made while it already ran, which
    may miss the end: once it is idle, ``detach`` it and ``read`` the rest from the log."""

    def read_rest(skip: dict[str, int]) -> None:
        log.info("container %s: the attach did not end with the container; reading its log", container_id[:12])
        detach()
        reader.join(2)
        try:
            read(skipping(replay(client, container_id).frames(), skip))
        except DAEMON_ERRORS as exc:
            log.warning("container %s: reading the rest of the log failed: %s", container_id[:12], exc)

    settle_late_attach(reader, received, ATTACH_IDLE_SECONDS, budget, read_rest)
