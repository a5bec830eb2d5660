"""SIGTERM on an idle worker is never lost in code that catches broad exceptions, and a
cold shutdown stops adopted executions whenever the second signal came (fakeredis)."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from rq.utils import now
from rq.exceptions import StopRequested

from worker.service import runtime as runtime_module
from worker.service.worker import DockrqWorker
from worker.service.runtime import WorkerRuntime
from worker.config.settings import WorkerSettings


@pytest.fixture
def worker(fake_redis, monkeypatch):
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}  # request_stop swaps them
    monkeypatch.setattr(runtime_module, "_current", WorkerRuntime(WorkerSettings.load({}), executor=object()))
    w = DockrqWorker(["q"], connection=fake_redis, name="w-stop")
    w.register_birth()
    yield w
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _signal_lands_in(worker, swallow_into):
    """The SIGTERM handler runs inside a ``try/except Exception`` section, as it may between jobs."""
    try:
        worker.request_stop(signal.SIGTERM, None)
    except Exception:  # noqa: BLE001 - what a ping that never raises, or the reaper's pass, does
        return swallow_into
    return None


class _PingThatNeverRaises:
    def __init__(self, worker) -> None:
        self.worker, self.pings = worker, 0

    def answered_within(self, seconds: float) -> bool:
        return False

    def is_installed(self) -> bool:
        self.pings += 1
        if self.pings == 1:
            return _signal_lands_in(self.worker, False) is None
        return True


def test_a_stop_during_a_docker_ping_is_raised_after_it(worker, monkeypatch):
    daemon = _PingThatNeverRaises(worker)
    monkeypatch.setattr(runtime_module, "_current", WorkerRuntime(WorkerSettings.load({}), executor=daemon))
    with pytest.raises(StopRequested):
        worker._wait_for_docker()
    assert daemon.pings == 1  # the ping answered; the request was held, not swallowed


def test_a_stop_during_the_reapers_pass_is_raised_after_it(worker):
    passes = []

    class Reaper:
        def run_once(self) -> None:
            passes.append(_signal_lands_in(worker, "swallowed"))

        def stop(self) -> None:
            pass

    worker._reaper = Reaper()
    worker.last_cleaned_at = None  # maintenance is due
    with pytest.raises(StopRequested):
        worker.run_maintenance_tasks()
    assert passes == [None]


def test_a_stop_on_a_busy_worker_still_waits_for_its_job(worker):
    worker.set_state("busy")
    with worker._holding_stop():
        worker.request_stop(signal.SIGTERM, None)
    assert worker._stop_requested  # rq's warm shutdown: finish the job, then stop


class _Adoptions:
    def __init__(self) -> None:
        self.running = {"adopted-1"}
        self.stopped_with = None

    def active(self) -> set[str]:
        return set(self.running)

    def wait(self, timeout: float | None = None) -> bool:
        raise AssertionError("teardown waited for adopted executions after a cold shutdown")

    def shut_down(self, timeout: float) -> None:
        self.stopped_with, self.running = timeout, set()


def test_teardown_after_a_cold_shutdown_stops_adopted_executions(worker):
    adoptions = _Adoptions()

    class Reaper:
        def __init__(self) -> None:
            self.adoptions = adoptions

        def stop(self) -> None:
            pass

    worker._reaper = Reaper()
    worker._shutdown_requested_date = now() - timedelta(seconds=5)
    with pytest.raises(SystemExit):  # the second SIGTERM, raised wherever the main thread was
        worker.request_force_stop(signal.SIGTERM, None)
    worker.teardown()
    assert adoptions.running == set() and adoptions.stopped_with is not None


def test_a_duplicate_signal_rq_ignores_is_no_cold_shutdown(worker):
    worker._shutdown_requested_date = now()  # a pool and the terminal both signal on Ctrl-C
    worker.request_force_stop(signal.SIGTERM, None)  # ignored by rq: within a second of the first
    assert not worker.cold_shutdown


def test_a_stop_while_the_success_transaction_is_built_waits_for_it(worker, fake_redis):
    """The worker goes idle in its job's success transaction (worker.service.bookkeeping), but
    for itself only once that ran: a pool's SIGINT landing in between asked for a stop that
    rq's ``_shutdown`` raised inside redis-py's reply parsing, breaking the transaction and
    hanging the pool (test_worker_service's pool test, 1 run in 10)."""
    worker.set_state("busy")
    with fake_redis.pipeline() as pipe:
        worker.increment_successful_job_count(pipeline=pipe)
        worker.request_stop(signal.SIGINT, None)  # raised StopRequested here before the fix
        pipe.execute()
    assert worker._stop_requested and worker.get_state() == "busy"
    assert fake_redis.hget(worker.key, "state") == b"idle"  # what Redis shows is the queued idle


def test_the_worker_is_idle_once_its_success_transaction_ran(worker, monkeypatch):
    from rq.worker.base import BaseWorker

    def rq_success(self, job, queue, started_job_registry, execution):  # its part that matters here
        with self.connection.pipeline() as pipe:
            self.increment_successful_job_count(pipeline=pipe)
            states.append(self.get_state())
            pipe.execute()

    states: list[str] = []
    monkeypatch.setattr(BaseWorker, "handle_job_success", rq_success)
    worker.set_state("busy")
    worker.handle_job_success(None, None, None, None)
    assert states == ["busy"] and worker.get_state() == "idle"
