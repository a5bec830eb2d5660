"""What an attached submit shows on stderr while it waits (producer/progress.py), on fakeredis."""

from __future__ import annotations

import io
import time

from producer.progress import SubmitProgress
from schemas import Event, ExecutionState, Keys, PullReport

KEYS = Keys("p")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _publish(r, execution_id: str, status: ExecutionState, progress: PullReport | None = None) -> None:
    r.publish(KEYS.events, Event(execution_id=execution_id, status=status, progress=progress).model_dump_json())


def _report(done_bytes: int, *, done: bool = False) -> PullReport:
    return PullReport(image="reg:5000/app:1", layers_done=2 if done else 1, layers_total=2, bytes_done=done_bytes,
                      bytes_total=4_000_000, done=done)


def _until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_plain_stderr_gets_the_waiting_notice_and_one_line_per_pull(fake_redis):
    out = io.StringIO()
    shown = SubmitProgress(fake_redis, KEYS, "e1", "jobs", stream=out, waiting_after=0.05).start()
    try:
        _until(lambda: out.getvalue())
        assert out.getvalue() == "dockrq: waiting for a worker on queue jobs\n"
        _publish(fake_redis, "other", ExecutionState.PULLING, _report(4_000_000, done=True))  # not ours
        for n in (1_000_000, 3_000_000):
            _publish(fake_redis, "e1", ExecutionState.PULLING, _report(n))
        _publish(fake_redis, "e1", ExecutionState.PULLING, _report(4_000_000, done=True))
        _until(lambda: out.getvalue().count("\n") == 2)
        _publish(fake_redis, "e1", ExecutionState.RUNNING)
    finally:
        shown.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("dockrq: pulled reg:5000/app:1: 4.0 MB in 2 layers, ")


def test_a_pull_cut_short_says_how_far_it_got(fake_redis):
    out = io.StringIO()
    shown = SubmitProgress(fake_redis, KEYS, "e2", "jobs", stream=out, waiting_after=60).start()
    try:
        _publish(fake_redis, "e2", ExecutionState.PULLING)
        _publish(fake_redis, "e2", ExecutionState.PULLING, _report(1_000_000))
        _publish(fake_redis, "e2", ExecutionState.CANCELLED)
        _until(lambda: out.getvalue())
    finally:
        shown.close()
    assert out.getvalue() == "dockrq: pulling reg:5000/app:1 stopped at 1.0 MB of 4.0 MB, 1/2 layers\n"


def test_a_terminal_gets_a_progress_bar_that_clears_itself(fake_redis):
    out = Tty()
    shown = SubmitProgress(fake_redis, KEYS, "e3", "jobs", stream=out, waiting_after=0.05).start()
    try:
        _until(lambda: "waiting for a worker on queue jobs" in out.getvalue())
        _publish(fake_redis, "e3", ExecutionState.PULLING, _report(2_000_000))
        _until(lambda: "pulling reg:5000/app:1" in out.getvalue())
        _publish(fake_redis, "e3", ExecutionState.PULLING, _report(4_000_000, done=True))
        _until(lambda: "dockrq: pulled reg:5000/app:1" in out.getvalue())
    finally:
        shown.close()
    last = out.getvalue().rstrip().splitlines()[-1].split("\x1b[2K")[-1]  # after the bar cleared its line
    assert last.startswith("dockrq: pulled reg:5000/app:1: 4.0 MB in 2 layers")


def test_nothing_is_shown_when_a_worker_takes_it_at_once(fake_redis):
    out = io.StringIO()
    shown = SubmitProgress(fake_redis, KEYS, "e4", "jobs", stream=out, waiting_after=0.3).start()
    _publish(fake_redis, "e4", ExecutionState.PULLING)
    _publish(fake_redis, "e4", ExecutionState.RUNNING)
    time.sleep(0.5)
    shown.close()
    assert out.getvalue() == ""
