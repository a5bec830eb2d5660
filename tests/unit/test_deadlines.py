"""worker.executor.deadlines: every execution's time limit on one shared thread."""

from __future__ import annotations

import threading

from worker.executor.deadlines import Deadlines


def test_calls_run_in_time_order_on_one_thread() -> None:
    deadlines = Deadlines(name="test-deadlines")
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def call(tag: str) -> None:
        ran.append((tag, threading.current_thread().name))
        if len(ran) == 3:
            done.set()

    deadlines.call_later(0.06, lambda: call("c"))
    deadlines.call_later(0.02, lambda: call("a"))
    deadlines.call_later(0.04, lambda: call("b"))
    assert done.wait(5)
    assert [tag for tag, _ in ran] == ["a", "b", "c"]
    assert {name for _, name in ran} == {"test-deadlines"}
    assert deadlines.pending() == 0


def test_a_cancelled_call_never_runs_and_a_failing_one_stops_no_other() -> None:
    deadlines = Deadlines()
    ran: list[str] = []
    last = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    cancelled = deadlines.call_later(0.01, lambda: ran.append("cancelled"))
    deadlines.call_later(0.01, boom)
    deadlines.call_later(0.03, lambda: (ran.append("last"), last.set()))
    cancelled.cancel()
    cancelled.cancel()  # twice: counted once
    assert last.wait(5)
    assert ran == ["last"]
    assert deadlines.pending() == 0


def test_many_cancelled_calls_are_dropped_before_their_time() -> None:
    deadlines = Deadlines()
    far = [deadlines.call_later(3600, lambda: None) for _ in range(200)]
    for d in far:
        d.cancel()
    assert deadlines.pending() == 0
    assert len(deadlines._heap) < 200  # not kept for an hour
