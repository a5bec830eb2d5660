"""Daemon threads kept for reuse: an execution's output reader and supervisor without a thread start each.

Every execution needs two threads of its own while its container runs (the attach
reader and the supervisor blocked in ``wait``); starting and ending two threads per
execution showed in the worker's CPU per execution (BENCHMARKS.md, "Worker CPU per
execution: where it goes"). ``REUSE.run(fn, name)`` runs ``fn`` on an idle thread of
the pool, or on a new one when none is idle; a thread left idle for
``IDLE_SECONDS`` ends. The threads are daemons, as the per-execution threads were
(a reader blocked on a socket must not hold up the process's exit), and each takes
the name it is given while it runs (``dockrq-out-ID``, ``dockrq-exec-ID``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: An idle thread ends after this long without work (seconds).
IDLE_SECONDS = 60.0
_IDLE_NAME = "dockrq-idle"


class Ran:
    """What ``run`` gives back: ``join``/``is_alive`` of the call, as a ``threading.Thread``'s."""

    __slots__ = ("name", "_done")

    def __init__(self, name: str) -> None:
        self.name = name
        self._done = threading.Event()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()


class ThreadReuse:
    """``run(fn, name)`` on a reused daemon thread; see the module docstring."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], object], Ran]]] = []
        self.started = 0  # threads started so far (tests, figures)

    def run(self, fn: Callable[[], object], name: str) -> Ran:
        """Call ``fn()`` on a thread named ``name`` (exceptions are logged, as threading's hook would print them)."""
        ran = Ran(name)
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self.started += 1
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()
        inbox.put((fn, ran))
        return ran

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def _serve(self, inbox: queue.SimpleQueue[tuple[Callable[[], object], Ran]]) -> None:
        me = threading.current_thread()
        while True:
            try:
                fn, ran = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # nobody took it meanwhile: end
                        self._idle.remove(inbox)
                        return
                continue  # taken just now: its work is on the way
            me.name = ran.name
            try:
                fn()
            except Exception:  # noqa: BLE001 - the thread serves on
                log.exception("%s failed", ran.name)
            finally:
                me.name = _IDLE_NAME
                with self._lock:
                    self._idle.append(inbox)
                ran._done.set()


#: The process's reused threads (worker.executor.handler's readers and supervisors).
REUSE = ThreadReuse()
