"""Every execution's time limit on one thread, instead of a ``threading.Timer`` (a thread) each.

A worker fills in ``timeout_seconds`` for every request (``DOCKRQ_MAX_TIMEOUT_SECONDS``),
so a ``Timer`` per execution started and ended a thread per execution for a limit that
almost never fires. ``Deadlines`` keeps them in a heap served by one daemon thread,
started on first use; a callback runs on that thread, so it must not block (the
handler's ``_stop`` only records the reason and hands the Docker call to a thread of
its own).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadline:
    """One scheduled call; ``cancel`` it once it is no longer wanted (a no-op after it ran)."""

    __slots__ = ("when", "fn", "cancelled", "_owner")

    def __init__(self, when: float, fn: Callable[[], object], owner: Deadlines) -> None:
        self.when = when  # time.monotonic() at which fn runs
        self.fn = fn
        self.cancelled = False
        self._owner = owner

    def cancel(self) -> None:
        self._owner._cancel(self)


class Deadlines:
    """``call_later(seconds, fn)`` on one shared daemon thread (named ``name``)."""

    def __init__(self, name: str = "dockrq-deadlines") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._dead = 0  # cancelled entries still in the heap
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, fn: Callable[[], object]) -> Deadline:
        """Run ``fn()`` on the deadlines thread ``seconds`` from now, unless cancelled first."""
        deadline = Deadline(time.monotonic() + seconds, fn, self)
        with self._cond:
            heapq.heappush(self._heap, (deadline.when, next(self._seq), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._heap[0][2] is deadline:
                self._cond.notify()
        return deadline

    def pending(self) -> int:
        """Calls scheduled and neither run nor cancelled."""
        with self._cond:
            return len(self._heap) - self._dead

    def _cancel(self, deadline: Deadline) -> None:
        with self._cond:
            if deadline.cancelled:  # cancelled already, or it ran
                return
            deadline.cancelled = True
            self._dead += 1
            if self._dead > 64 and self._dead * 2 > len(self._heap):  # drop them rather than keep them to their time
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._dead = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                        self._dead -= 1
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        due = heapq.heappop(self._heap)[2]
                        due.cancelled = True  # ran: a later cancel() is a no-op
                        break
                    self._cond.wait(delay)
            try:
                due.fn()
            except Exception:  # noqa: BLE001 - one failing callback must not end the others' limits
                log.exception("deadline callback failed")


#: The process's one deadlines thread (started on first use): every handler's timeout_seconds.
DEADLINES = Deadlines()
