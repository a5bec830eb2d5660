"""What an attached ``dockrq submit`` does when it is interrupted: Ctrl-C (SIGINT), SIGTERM or SIGHUP.

``docker run`` proxies the signals it receives to the container (``--sig-proxy``, on by
default), so killing the client does not leave the container running. dockrq does the
same with each of the three: it cancels the execution (``Producer.cancel``: the worker
stops the container, SIGTERM then SIGKILL after the stop grace), waits for its outcome,
bounded by ``outcome_bound`` (the request's ``--stop-timeout`` or the worker's default
grace, plus ``AFTER_CANCEL_MARGIN_SECONDS`` for the worker to collect the outputs and
write the outcome), writes ``--output-dir`` as for any other ending, and exits
``128 + signal`` (130, 143, 129) as a shell reports a process killed by that signal.
A second signal stops the waiting. A detached ``submit -d`` installs nothing: it has
returned before anything could be interrupted.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from schemas import ExecutionStatus, Outcome

from .client import Producer
from .errors import ExecutionAlreadyFinished

DEFAULT_STOP_GRACE_SECONDS = 10.0  # a worker's DOCKRQ_STOP_GRACE_SECONDS default (docker stop's 10 s)
AFTER_CANCEL_MARGIN_SECONDS = 30.0  # the worker notices the cancel, collects outputs, writes the outcome
FORWARDED = (signal.SIGTERM, signal.SIGHUP)  # and SIGINT, which Python raises as KeyboardInterrupt


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP received while attached, raised where the main thread was (as Python
    raises KeyboardInterrupt for SIGINT); ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM/SIGHUP for ``Interrupted``, else SIGINT."""
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise ``Interrupted`` in the main thread, as Ctrl-C raises
    KeyboardInterrupt; the previous handlers are put back on the way out. Nothing is changed
    outside the main thread (Python's signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    saved = {s: signal.signal(s, raise_interrupted) for s in FORWARDED}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def outcome_bound(request: dict[str, Any]) -> float:
    """Seconds to wait for the outcome after a cancel: the stop grace the worker gives the
    container (the request's ``stop_timeout``, at least the default grace) plus the margin."""
    grace = request.get("stop_timeout")
    return max(float(grace or 0), DEFAULT_STOP_GRACE_SECONDS) + AFTER_CANCEL_MARGIN_SECONDS


def cancel_and_wait(producer: Producer, execution_id: str, bound: float) -> tuple[str, Outcome | None]:
    """Cancel ``execution_id`` and wait up to ``bound`` seconds for its outcome.

    Returns the line to say and the outcome, or None when the wait ran out or a second
    interrupt stopped it. The line says what is known: ``cancelled execution ID`` once its
    outcome says so, ``cancel requested ...`` while it has not ended, ``interrupted; ...``
    when it had ended (or ended otherwise) before the cancel."""
    try:
        producer.cancel(execution_id)
        message = None
    except ExecutionAlreadyFinished as exc:
        message = f"interrupted; {exc}"
    try:
        outcome: Outcome | None = producer.wait(execution_id, timeout=bound)
    except (TimeoutError, KeyboardInterrupt):  # Interrupted is a KeyboardInterrupt
        outcome = None
    if message is not None:
        return message, outcome
    if outcome is None:
        return f"cancel requested for execution {execution_id}; it has not ended yet", None
    if outcome.status is ExecutionStatus.CANCELLED:
        return f"cancelled execution {execution_id}", outcome
    return f"interrupted; execution {execution_id} ended {outcome.status.value} before the cancel", outcome
