"""worker.executor.threads: an execution's reader and supervisor on reused daemon threads."""

from __future__ import annotations

import threading
import time

from worker.executor.threads import ThreadReuse


def test_sequential_calls_reuse_one_thread_named_after_each_call() -> None:
    reuse = ThreadReuse(idle_seconds=5)
    seen: list[tuple[str, int | None, bool]] = []
    for n in range(5):
        ran = reuse.run(lambda n=n: seen.append((threading.current_thread().name, threading.get_ident(),
                                                  threading.current_thread().daemon)), f"dockrq-out-e{n}")
        ran.join(5)
        assert not ran.is_alive()
    assert [name for name, _, _ in seen] == [f"dockrq-out-e{n}" for n in range(5)]
    assert len({ident for _, ident, _ in seen}) == 1 and all(daemon for _, _, daemon in seen)
    assert reuse.started == 1


def test_concurrent_calls_get_threads_of_their_own_and_a_failure_stops_nothing() -> None:
    reuse = ThreadReuse(idle_seconds=5)
    gate = threading.Event()
    blocked = [reuse.run(gate.wait, f"dockrq-exec-{n}") for n in range(3)]
    assert all(r.is_alive() for r in blocked)
    assert reuse.started == 3

    def boom() -> None:
        raise RuntimeError("boom")

    failed = reuse.run(boom, "dockrq-exec-boom")
    failed.join(5)
    assert not failed.is_alive()
    gate.set()
    for r in blocked:
        r.join(5)
        assert not r.is_alive()
    assert reuse.started == 4
    after = reuse.run(lambda: None, "dockrq-exec-after")  # one of the four, now idle
    after.join(5)
    assert reuse.started == 4


def test_an_idle_thread_ends_after_idle_seconds() -> None:
    reuse = ThreadReuse(idle_seconds=0.05)
    reuse.run(lambda: None, "dockrq-out-x").join(5)
    deadline = time.monotonic() + 5
    while reuse.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reuse.idle() == 0
    reuse.run(lambda: None, "dockrq-out-y").join(5)  # a new one is started for later work
    assert reuse.started == 2
