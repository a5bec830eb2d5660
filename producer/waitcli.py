"""``dockrq wait ID...`` with several ids: report each as it ends, exit with the worst.

Worst, from best to worst (the exit code of the worst one is the command's):

1. succeeded: 0
2. failed: the container's exit code (the highest of them when several failed)
3. timed_out: 124
4. cancelled: 130
5. ``--timeout`` ran out with some still running: 75 (those are named on stderr; with ``--json``
   a last line ``{"error", "exit_code": 75, "pending": [ids]}`` on stdout)
6. rejected, error, lost, or an unknown id: 125

An unknown id (never submitted, or expired) gets one error line, ``dockrq: no such execution:
ID`` on stderr (``--json``: ``{"error", "exit_code": 125, "execution_id"}`` on stdout), and the
others are waited for and reported all the same, as ``docker wait a nosuch`` prints a's code
and an error for nosuch; the exit code is then 125 (the worst).
"""

from __future__ import annotations

from collections.abc import Callable

import time

import click
import redis

from schemas import ExecutionStatus, Outcome

from .client import Producer
from .errors import ExecutionNotFound, ExecutionVanished, ProducerError
from .many import WaitTimeout
from .usage import json_error

EXIT_WAIT_TIMEOUT = 75
EXIT_DOCKRQ_FAILED = 125
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
    producer: Producer, execution_ids: list[str], timeout: float | None, report: Callable[[Outcome], int],
    *, as_json: bool = False,
) -> int:
    """Follow the executions with ``Producer.as_completed``; ``report`` prints one and returns its exit code.

    Returns the exit code of the worst (module doc). When ``timeout`` runs out, the ids still
    running are named on stderr, or (``as_json``) in a last JSON line ``{"error", "exit_code",
    "pending": [ids]}`` on stdout, the form of every ``--json`` error.
    """
    worst: tuple[tuple[int, int], int] = ((-1, 0), 0)
    deadline = None if timeout is None else time.monotonic() + timeout
    ids = list(dict.fromkeys(execution_ids))
    try:
        while ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                for outcome in producer.as_completed(ids, timeout=left):
                    code = report(outcome)
                    worst = max(worst, (rank(outcome), code))
                break
            except ExecutionNotFound as exc:  # unknown ids come listed before any outcome is yielded
                if isinstance(exc, ExecutionVanished):
                    raise
                unknown = [i for i in exc.execution_id.split(", ") if i in ids]
                if not unknown:
                    raise
                for execution_id in unknown:
                    _no_such(execution_id, as_json)
                    ids.remove(execution_id)
                worst = max(worst, ((_RANK_DOCKRQ_FAILED, 0), EXIT_DOCKRQ_FAILED))
    except WaitTimeout as exc:
        # each id with what it is doing, after the --timeout given (not the slice left of it)
        states = [f"{i} {not_ended_state(producer, i)}" for i in exc.pending[:_SHOWN_PENDING]]
        more = f" and {len(exc.pending) - _SHOWN_PENDING} more" if len(exc.pending) > _SHOWN_PENDING else ""
        after = f" after {timeout:g}s" if timeout is not None else ""
        message = f"{len(exc.pending)} execution(s) not ended{after}: {', '.join(states)}{more}"
        if as_json:
            json_error(message, EXIT_WAIT_TIMEOUT, pending=exc.pending)
        else:
            click.echo(f"dockrq: {message}", err=True)
        worst = max(worst, ((_RANK_WAIT_TIMEOUT, 0), EXIT_WAIT_TIMEOUT))
    return worst[1]


_SHOWN_PENDING = 10  # ids named in the timeout line (all are in --json's "pending")


def _no_such(execution_id: str, as_json: bool) -> None:
    if as_json:
        json_error(f"no such execution: {execution_id}", EXIT_DOCKRQ_FAILED, execution_id=execution_id)
    else:
        click.echo(f"dockrq: no such execution: {execution_id}", err=True)


def not_ended_state(producer: Producer, execution_id: str) -> str:
    """What a not yet ended execution is doing, for ``wait --timeout``'s message: ``queued``,
    ``scheduled``, ``pulling``, ``running`` ... (``producer.status``), or ``not ended``."""
    try:
        return producer.status_once(execution_id).state.value  # no second wait for Redis
    except (ProducerError, redis.RedisError):  # only words for a message; the timeout is the error
        return "not ended"


def outcome_shown(outcome: Outcome) -> str:
    """The status, with what an operator asks next: which exit code, OOM or not, and the error
    code of a run dockrq itself could not finish (``dockrq ls``, ``dockrq wait ID...``)."""
    state = outcome.status.value
    if outcome.result is not None and outcome.result.oom_killed:
        return f"{state} (oom)"
    if outcome.status == ExecutionStatus.FAILED and outcome.exit_code is not None:
        return f"{state} ({outcome.exit_code})"
    if outcome.error is not None and outcome.error.code != outcome.status.value:
        return f"{state} ({outcome.error.code})"
    return state


def one_line_reporter(as_json: bool, exit_code_for: Callable[[Outcome], int]) -> Callable[[Outcome], int]:
    """``report`` for ``wait_several``: one line per ended execution (``ID  STATUS  detail``, or
    its outcome as a JSON line); returns its exit code by ``exit_code_for``."""

    def report(outcome: Outcome) -> int:
        if as_json:
            click.echo(outcome.model_dump_json())
        else:
            detail = outcome.error.message if outcome.error is not None and outcome.error.message else ""
            click.echo(f"{outcome.execution_id}  {outcome_shown(outcome)}" + (f"  {detail}" if detail else ""))
        return exit_code_for(outcome)

    return report
