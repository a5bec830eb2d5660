"""``dockrq wait ID...`` with several ids: report each as it ends, exit with the worst.

Worst, from best to worst (the exit code of the worst one is the command's):

1. succeeded: 0
2. failed: the container's exit code (the highest of them when several failed)
3. timed_out: 124
4. cancelled: 130
5. ``--timeout`` ran out with some still running: 75 (those are named on stderr)
6. rejected, error, lost, or an unknown id: 125 (an unknown id is refused before waiting)
"""

from __future__ import annotations

from collections.abc import Callable

import click

from schemas import ExecutionStatus, Outcome

from .client import Producer
from .many import WaitTimeout

EXIT_WAIT_TIMEOUT = 75
_RANK = {
    ExecutionStatus.SUCCEEDED: 0,
    ExecutionStatus.FAILED: 1,
    ExecutionStatus.TIMED_OUT: 2,
    ExecutionStatus.CANCELLED: 3,
}
_RANK_WAIT_TIMEOUT = 4
_RANK_DOCKRQ_FAILED = 5


def rank(outcome: Outcome) -> tuple[int, int]:
    """Sort key of an outcome's badness (higher is worse); the container's code breaks ties among failures."""
    return _RANK.get(outcome.status, _RANK_DOCKRQ_FAILED), outcome.exit_code or 0


def wait_several(
    producer: Producer, execution_ids: list[str], timeout: float | None, report: Callable[[Outcome], int]
) -> int:
    """Follow the executions with ``Producer.as_completed``; ``report`` prints one and returns its exit code.

    Returns the exit code of the worst (module doc).
    """
    worst: tuple[tuple[int, int], int] = ((-1, 0), 0)
    try:
        for outcome in producer.as_completed(execution_ids, timeout=timeout):
            code = report(outcome)
            worst = max(worst, (rank(outcome), code))
    except WaitTimeout as exc:
        click.echo(f"dockrq: {exc}", err=True)
        worst = max(worst, ((_RANK_WAIT_TIMEOUT, 0), EXIT_WAIT_TIMEOUT))
    return worst[1]
