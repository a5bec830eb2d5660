"""OOM kills of this executor's containers, as the daemon announces them.

``State.OOMKilled`` from inspect is the first source, but dockerd 20.10 on
cgroup v1 loses it when the OOM event is handled before the exit (the exit
overwrites the flag). The daemon's ``oom`` event is emitted either way, so one
events subscription per executor records every OOM-killed container, and the
classifier consults both.
"""

from __future__ import annotations

import logging
import threading
import time

from .client import DockerClient
from .errors import DAEMON_ERRORS
from .spec import LABEL_EXECUTOR

log = logging.getLogger(__name__)

_KEEP_SECONDS = 600.0


class OomWatcher:
    def __init__(self, client: DockerClient, executor_id: str) -> None:
        self._client = client
        self._filters = {"event": ["oom"], "label": [f"{LABEL_EXECUTOR}={executor_id}"]}
        self._seen: dict[str, float] = {}
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

    def close(self) -> None:
        self._closed = True
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a half-dead HTTP stream must not fail shutdown
                pass

    def _run(self) -> None:
        while not self._closed:
            try:
                self._stream = self._client.api.events(filters=self._filters, decode=True)
                self._subscribed.set()
                for event in self._stream:
                    self._record(event.get("id") or event.get("Actor", {}).get("ID", ""))
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
            for cid in [c for c, t in self._seen.items() if now - t > _KEEP_SECONDS]:
                del self._seen[cid]
            self._cond.notify_all()
