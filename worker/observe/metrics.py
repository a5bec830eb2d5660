"""Prometheus instruments of a dockrq worker, and the few calls the worker makes into them.

The execution, channel and reaper code call the functions below at a handful of
points; they do nothing until ``enable()`` has run (``dockrq-worker run
--metrics-port``), so a worker without metrics, a plain ``rq worker`` and the
unit tests pay nothing. ``prometheus_client`` is imported by ``enable()`` only,
because its multiprocess mode (``--pool N``, see ``worker.observe.exporter``) has to be
chosen before its first import in the process.

Names follow Prometheus's conventions (https://prometheus.io/docs/practices/naming/):
the ``dockrq_`` namespace, base units (seconds), ``_total`` on counters, one
metric per quantity with a label for its kinds:

=====================================================  =========  ====================================
``dockrq_executions_started_total``                    counter    rq jobs this worker took off a queue
``dockrq_executions_ended_total{status}``              counter    outcomes this worker wrote (reaper's ``lost`` included)
``dockrq_executions_running``                          gauge      executions in this worker now (pull to outcome; adopted ones too)
``dockrq_execution_queue_wait_seconds``                histogram  rq job enqueued -> taken by this worker
``dockrq_image_pull_seconds``                          histogram  an execution's image pull (failed ones too; none when present)
``dockrq_execution_run_seconds{status}``               histogram  container started -> ended
``dockrq_outcome_write_retries_total``                 counter    outcome writes retried while Redis was unreachable
``dockrq_reaper_actions_total{action}``                counter    adopted, requeued, lost, orphan_removed, settled
=====================================================  =========  ====================================
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from schemas import ExecutionStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from schemas import Outcome

# Buckets in seconds. Executions run from milliseconds to a day (DOCKRQ_MAX_TIMEOUT_SECONDS);
# queue waits from milliseconds (an idle fleet) to hours (a backlog); pulls from a second to minutes.
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
PULL_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# ``dockrq_reaper_actions_total`` label values, and the ReapReport fields each one counts.
REAPER_ACTIONS: dict[str, tuple[str, ...]] = {
    "adopted": ("adopted",),            # a dead worker's running container followed to its end here
    "requeued": ("requeued", "unstuck"),  # put back on its queue (retries left, or never started)
    "lost": ("lost",),                  # ended with a `lost` outcome
    "orphan_removed": ("removed_containers",),  # containers stopped/removed by the reaper
    "settled": ("settled",),            # rq job of a dead worker settled after its outcome
}


@dataclass
class _Instruments:
    started: Counter
    ended: Counter
    running: Gauge
    queue_wait: Histogram
    pull: Histogram
    run: Histogram
    outcome_retries: Counter
    reaper: Counter


_instruments: _Instruments | None = None
_lock = threading.Lock()


def enable(registry: CollectorRegistry | None = None, *, register: bool = True) -> None:
    """Create the instruments (idempotent); from now on the hooks below record.

    ``registry``: where they are registered (default: prometheus_client's global
    REGISTRY, which also carries the ``process_*`` metrics). ``register=False``
    creates them unregistered: in multiprocess mode the values go to files that
    the pool's parent reads (``worker.observe.exporter``).
    """
    global _instruments
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    with _lock:
        if _instruments is not None:
            return
        reg: Any = (registry or REGISTRY) if register else None
        i = _Instruments(
            started=Counter(
                "dockrq_executions_started_total", "rq jobs (executions) this worker took off its queues.",
                registry=reg,
            ),
            ended=Counter(
                "dockrq_executions_ended_total",
                "Executions whose outcome this worker wrote, by outcome status (the reaper's lost ones included).",
                ["status"], registry=reg,
            ),
            running=Gauge(
                "dockrq_executions_running", "Executions in this worker now, from image pull to outcome (adopted ones too).",
                registry=reg, multiprocess_mode="livesum",
            ),
            queue_wait=Histogram(
                "dockrq_execution_queue_wait_seconds", "Time from the rq job's enqueue to a worker taking it.",
                buckets=QUEUE_WAIT_BUCKETS, registry=reg,
            ),
            pull=Histogram(
                "dockrq_image_pull_seconds",
                "Time spent pulling an execution's image, failed pulls included (executions whose image was present make none).",
                buckets=PULL_BUCKETS, registry=reg,
            ),
            run=Histogram(
                "dockrq_execution_run_seconds", "Time from the container's start to its end, by outcome status.",
                ["status"], buckets=RUN_BUCKETS, registry=reg,
            ),
            outcome_retries=Counter(
                "dockrq_outcome_write_retries_total", "Outcome writes retried because Redis was unreachable.",
                registry=reg,
            ),
            reaper=Counter(
                "dockrq_reaper_actions_total", "What this worker's reaper did, by action.", ["action"], registry=reg,
            ),
        )
        for status in ExecutionStatus:  # every series exists from the start, at 0
            i.ended.labels(status=status.value)
        for action in REAPER_ACTIONS:
            i.reaper.labels(action=action)
        _instruments = i


def enabled() -> bool:
    return _instruments is not None


# -- hooks (no-ops until enable()) ---------------------------------------------------------


def job_taken(enqueued_at: datetime | None) -> None:
    """An rq job was taken off a queue (rq's ``enqueued_at``: naive values are UTC)."""
    i = _instruments
    if i is None:
        return
    i.started.inc()
    if enqueued_at is not None:
        if enqueued_at.tzinfo is None:
            enqueued_at = enqueued_at.replace(tzinfo=timezone.utc)
        i.queue_wait.observe(max(0.0, (datetime.now(timezone.utc) - enqueued_at).total_seconds()))


@contextmanager
def running() -> Iterator[None]:
    """Counts one execution in ``dockrq_executions_running`` while inside."""
    i = _instruments
    if i is None:
        yield
        return
    i.running.inc()
    try:
        yield
    finally:
        i.running.dec()


def outcome_written(outcome: Outcome) -> None:
    """This worker's outcome is the one stored (first writer wins): count it once, with its
    run time and the image pull made for it (``ExecutionResult.pull_seconds``: the executor's
    pull record, failed pulls included; None when the image was present)."""
    i = _instruments
    if i is None:
        return
    status = outcome.status.value
    i.ended.labels(status=status).inc()
    result = outcome.result
    if result is not None and result.pull_seconds is not None:
        i.pull.observe(max(0.0, result.pull_seconds))
    if result is not None and result.started_at is not None and result.finished_at is not None:
        i.run.labels(status=status).observe(max(0.0, (result.finished_at - result.started_at).total_seconds()))


def outcome_write_retried() -> None:
    i = _instruments
    if i is not None:
        i.outcome_retries.inc()


def reaped(report: Any) -> None:
    """One reaper pass's ``ReapReport`` (lists of execution ids / container ids per action)."""
    i = _instruments
    if i is None or report is None:
        return
    for action, fields in REAPER_ACTIONS.items():
        n = sum(len(getattr(report, f, ()) or ()) for f in fields)
        if n:
            i.reaper.labels(action=action).inc(n)
