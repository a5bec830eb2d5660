"""OOM kills of this executor's containers, as the daemon announces them.

``State.OOMKilled`` from inspect is the first source, but dockerd 20.10 on
cgroup v1 loses it when the OOM event is handled before the exit (the exit
overwrites the flag). The daemon's ``oom`` event is emitted either way, so one
events subscription per executor records every OOM-killed container, and the
classifier consults both.

Both say that the OOM killer acted *somewhere in the container*, not which
process it killed (docker's ``State.OOMKilled`` is set for a child killed while
the main process lives on, too). The daemon emits one ``oom`` event per kill
(containerd's OOM notification of the container's cgroup), so they are counted:
``kills()`` is the ``oom_kills`` of the result.
"""

from __future__ import annotations

import logging
import threading
import time

from .client import DockerClient
from .errors import DAEMON_ERRORS
from .spec import LABEL_EXECUTOR

log = logging.getLogger(__name__)

# Handlers forget their container once classified; this only bounds what nobody forgets
# (containers of this executor the executor did not run, e.g. made by hand).
_KEEP_SECONDS = 24 * 3600.0
_MAX_KEYS = 10_000


class OomWatcher:
    def __init__(self, client: DockerClient, executor_id: str) -> None:
        self._client = client
        self._filters = {"event": ["oom"], "label": [f"{LABEL_EXECUTOR}={executor_id}"]}
        self._seen: dict[str, float] = {}  # container id -> when its last oom event came
        self._counts: dict[str, int] = {}  # container id -> oom events so far
        self._keys: dict[tuple[str, object], None] = {}  # (container id, timeNano) of events counted
        self._cond = threading.Condition()
        self._stream = None
        self._closed = False
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dockrq-oom-{executor_id}", daemon=True)
        self._thread.start()
        # Containers started before the subscription is live could OOM unseen.
        self._subscribed.wait(5)

    def saw(self, container_id: str, wait: float = 0.0) -> bool:
        """Whether ``container_id`` was OOM-killed; waits up to ``wait`` seconds for
        an event still in flight (the exit can overtake it)."""
        with self._cond:
            return self._cond.wait_for(lambda: container_id in self._seen, timeout=wait)

    def kills(self, container_id: str, wait: float = 0.0) -> int:
        """How many ``oom`` events the daemon sent for ``container_id`` (0 if none); waits up
        to ``wait`` seconds for a first one still in flight."""
        with self._cond:
            self._cond.wait_for(lambda: container_id in self._seen, timeout=wait)
            return self._counts.get(container_id, 0)

    def forget(self, container_id: str) -> None:
        """Drop what was recorded for ``container_id`` (its execution is classified)."""
        with self._cond:
            self._seen.pop(container_id, None)
            self._counts.pop(container_id, None)

    def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a half-dead HTTP stream must not fail shutdown
                pass

    def _run(self) -> None:
        # dockerd sends the response headers of GET /events *before* it subscribes, so an
        # event in between would be lost: every subscription asks for the events since a
        # moment before it (the daemon replays them from its buffer); repeats are dropped.
        since = int(time.time()) - 1
        while not self._closed:
            try:
                self._stream = self._client.api.events(since=since, filters=self._filters, decode=True)
                self._subscribed.set()
                for event in self._stream:
                    since = max(since, int(event.get("time") or 0) - 1)
                    key = (event.get("id") or event.get("Actor", {}).get("ID", ""), event.get("timeNano"))
                    if key[1] is not None and key in self._keys:
                        continue
                    self._keys[key] = None
                    self._record(key[0])
            except DAEMON_ERRORS as exc:
                self._subscribed.set()  # no daemon: nothing to wait for at construction
                if not self._closed:
                    log.debug("oom watcher: events stream ended (%s); resubscribing", exc)
            if not self._closed:
                time.sleep(1.0)

    def _record(self, container_id: str) -> None:
        now = time.monotonic()
        with self._cond:
            self._seen[container_id] = now
            self._counts[container_id] = self._counts.get(container_id, 0) + 1
            for cid in [c for c, t in self._seen.items() if now - t > _KEEP_SECONDS]:
                del self._seen[cid]
                self._counts.pop(cid, None)
            while len(self._keys) > _MAX_KEYS:  # oldest first: only recent events can repeat
                del self._keys[next(iter(self._keys))]
            self._cond.notify_all()
