"""How an execution whose container ended is reported: status, ``oom_killed``, ``oom_kills``.

The status follows the container's *main process*, the way ``docker run``'s own
exit code does:

- Docker's OOM signals (``State.OOMKilled`` from inspect, the ``oom`` events)
  say that the kernel's OOM killer acted somewhere in the container's cgroup,
  not which process it killed. A child killed while the main process handles it
  and exits 0 is an execution that ``succeeded``; it is reported in
  ``oom_kills`` (how many times the OOM killer acted) without changing the
  status.
- ``oom_killed`` means the main process itself was killed by the OOM killer: it
  ended by SIGKILL (exit code 137) while the OOM killer acted in the container
  and nobody here stopped it. Exit 137 alone is never called OOM.
- ``cancelled`` / ``timed_out`` mean that the executor's stop ended the
  container. A container that had already exited on its own when the stop
  reached the daemon (``POST /containers/{id}/stop`` answers 304 Not Modified)
  keeps its own status: a late cancel of work that completed is not a cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from schemas import ExecutionStatus

from .threads import REUSE, Ran

SIGKILL_EXIT = 128 + 9


@dataclass(frozen=True)
class Ending:
    """What is known once the container has stopped.

    ``exit_code``: from ``wait``. ``oom_flag``: inspect's ``State.OOMKilled``.
    ``oom_events``: the daemon's ``oom`` events for the container. ``stop_reason``:
    the first stop this executor asked for (cancel, timeout), if any.
    ``stop_ended_it``: True if the container was running when the stop reached the
    daemon, False if it had already exited (or was gone), None if unknown (the
    stop request failed): then the stop is taken to have ended it.
    """

    exit_code: int | None
    oom_flag: bool = False
    oom_events: int = 0
    stop_reason: ExecutionStatus | None = None
    stop_ended_it: bool | None = None


@dataclass(frozen=True)
class Verdict:
    status: ExecutionStatus
    oom_killed: bool
    oom_kills: int


def classify(ending: Ending) -> Verdict:
    """The status and OOM fields of the result for ``ending`` (rules in the module doc)."""
    oom_kills = max(ending.oom_events, 1 if ending.oom_flag else 0)
    stopped = ending.stop_reason is not None and ending.stop_ended_it is not False
    if stopped:
        assert ending.stop_reason is not None
        return Verdict(ending.stop_reason, oom_killed=False, oom_kills=oom_kills)
    oom_killed = ending.exit_code == SIGKILL_EXIT and oom_kills > 0
    status = ExecutionStatus.SUCCEEDED if ending.exit_code == 0 else ExecutionStatus.FAILED
    return Verdict(status, oom_killed=oom_killed, oom_kills=oom_kills)


class StopRequests:
    """The stop requests sent for one container, each on its own thread (a cancel returns
    at once), and what the daemon answered: did the stop end the container?

    The threads are ``worker.executor.threads.REUSE``'s: what ``send`` keeps is a handle
    whose ``join`` waits on an event, so ``ended_it`` may wait for a stop whose thread
    has not begun yet (a ``threading.Thread`` raises RuntimeError there; that race
    turned a late cancel's ``succeeded`` into a supervisor ``error``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: list[Ran] = []
        self._answers: list[bool | None] = []

    def send(self, stop: Callable[[], bool | None]) -> None:
        """Run ``stop`` (True: it ended the container, False: it had exited, None: failed)
        on a thread of its own; ``ended_it`` waits for it."""

        def run() -> None:
            answer = None
            try:
                answer = stop()
            finally:
                with self._lock:
                    self._answers.append(answer)

        with self._lock:
            self._sent.append(REUSE.run(run, "dockrq-stop"))

    def ended_it(self, timeout: float) -> bool | None:
        """``Ending.stop_ended_it`` once the requests sent so far are answered (each waited
        for at most ``timeout`` s): True if one ended it, False if every one found it
        exited, None if none was sent or none could tell."""
        with self._lock:
            sent = list(self._sent)
        for ran in sent:
            ran.join(timeout)
        with self._lock:
            answers = list(self._answers)
        if any(a is True for a in answers):
            return True
        if answers and all(a is False for a in answers):
            return False
        return None
