"""When rq interrupts the job function: what the outcome says, and keeping further signals
from cutting the ending short.

rq stops a job by raising into it: ``JobTimeoutException`` (its job timeout,
SIGALRM), ``StopRequested``/``ShutDownImminentException``/``SystemExit`` (warm
and cold shutdown), or any exception escaping it. The execution then ends
``timed_out``, ``cancelled``/``worker_shutdown`` or ``error``/``worker_error``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rq.exceptions import ShutDownImminentException, StopRequested
from rq.timeouts import JobTimeoutException

from schemas import ExecutionStatus

log = logging.getLogger(__name__)


def interruption(exc: BaseException) -> tuple[ExecutionStatus, str, str]:
    """(status, error code, message) of an execution that ``exc`` interrupted."""
    if isinstance(exc, JobTimeoutException):
        return ExecutionStatus.TIMED_OUT, "job_timeout", f"rq job timeout: {exc}"
    if isinstance(exc, Exception) and not isinstance(exc, ShutDownImminentException | StopRequested):
        return ExecutionStatus.ERROR, "worker_error", f"{type(exc).__name__}: {exc}"
    return ExecutionStatus.CANCELLED, "worker_shutdown", "the worker shut down"


@contextmanager
def signals_deferred() -> Iterator[None]:
    """While the container is being stopped and the outcome written, a further
    SIGTERM/SIGINT (impatient operator) or rq's SIGALRM must not cut that short.

    A deferred SIGTERM/SIGINT is delivered to rq's handler afterwards, so a stop
    request is never lost; a deferred SIGALRM is dropped (the job is ending anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {
        sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    }
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(p for p in pending if p != signal.SIGALRM):
            log.warning("delivering %s received while finishing an execution", signal.Signals(sig).name)
            signal.raise_signal(sig)
