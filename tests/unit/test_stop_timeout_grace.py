"""A request's ``stop_timeout`` (docker run --stop-timeout) is the grace of every stop of its
container: a cancel on its worker, a dead worker's reaper, an adopter's shutdown (no Docker)."""

from __future__ import annotations

import queue
from types import SimpleNamespace
from typing import Any

import pytest

from schemas import ExecutionRequest
from worker.config.settings import WorkerSettings
from worker.execution.run import ExecutionRun
from worker.executor import DockerExecutor, OwnedContainer
from worker.executor.handler import ExecutionHandler
from worker.faults.adoption import Adoptions
from worker.faults.sweep import UNBOUNDED_STOP_GRACE_SECONDS, ReapReport, SweepContext


class _Client:
    """The DockerClient calls remove_container and a handler's stop make."""

    def __init__(self, stop_timeout: Any = None) -> None:
        self.config = {} if stop_timeout is None else {"StopTimeout": stop_timeout}
        self.stops: queue.Queue[tuple[str, float]] = queue.Queue()
        self.removed: list[str] = []

    def inspect(self, container_id: str) -> dict[str, Any]:
        return {"Config": self.config}

    def stop(self, container_id: str, grace: float) -> None:
        self.stops.put((container_id, grace))

    def remove(self, container_id: str) -> None:
        self.removed.append(container_id)


def _container(state: str = "running") -> OwnedContainer:
    return OwnedContainer("c1", "e1", "node-a", state, 0.0, {})


def _executor(client: _Client) -> DockerExecutor:
    executor = object.__new__(DockerExecutor)  # no daemon: only remove_container is exercised
    executor.client = client
    return executor


@pytest.mark.parametrize(
    ("own", "grace", "max_grace", "stopped_with"),
    [
        (2, 30.0, 60.0, 2),  # the container's own StopTimeout, not the caller's grace
        (120, 30.0, 60.0, 60.0),  # ... held to the bound
        (5, 30.0, None, 5),
        (None, 30.0, 60.0, 30.0),  # none of its own: the caller's grace
        (7, 0.0, 60.0, 7),  # a worker grace of 0 still gives the request its own
    ],
)
def test_remove_container_stops_with_the_containers_own_stop_timeout(own, grace, max_grace, stopped_with):
    client = _Client(own)
    _executor(client).remove_container(_container(), grace, max_grace=max_grace)
    assert client.stops.get_nowait() == ("c1", stopped_with)
    assert client.removed == ["c1"]


@pytest.mark.parametrize(("state", "grace"), [("running", None), ("exited", 30.0)])
def test_remove_container_without_grace_or_not_running_is_docker_rm_f(state, grace):
    client = _Client(5)
    _executor(client).remove_container(_container(state), grace)
    assert client.stops.empty() and client.removed == ["c1"]


def _sweep_context(**env: str) -> SweepContext:
    ctx = object.__new__(SweepContext)
    ctx.settings = WorkerSettings.load(env)
    return ctx


def test_the_reapers_longest_grace_and_its_lock_cover_the_policys_stop_timeout():
    assert _sweep_context().longest_stop_grace == 60  # DOCKRQ_MAX_STOP_TIMEOUT_SECONDS's default
    assert _sweep_context(DOCKRQ_MAX_STOP_TIMEOUT_SECONDS="none").longest_stop_grace == UNBOUNDED_STOP_GRACE_SECONDS
    longer = _sweep_context(DOCKRQ_STOP_GRACE_SECONDS="120", DOCKRQ_MAX_STOP_TIMEOUT_SECONDS="5")
    assert longer.longest_stop_grace == 120

    calls = []
    docker = SimpleNamespace(remove_container=lambda c, grace, max_grace: calls.append((c.id, grace, max_grace)))
    report = ReapReport()
    _sweep_context(DOCKRQ_MAX_STOP_TIMEOUT_SECONDS="5").remove(docker, [_container()], report, grace=10.0)
    assert calls == [("c1", 10.0, 10.0)] and report.removed_containers == ["c1"]


def _request(**fields: Any) -> ExecutionRequest:
    return ExecutionRequest.model_validate({"execution_id": "e1", "engine": {"image": "busybox"}, **fields})


@pytest.mark.parametrize(
    ("stop_timeout", "grace", "stopped_with"),
    [(3, None, 3), (None, None, 30.0), (3, 0, 0)],  # an explicit grace wins, as docker stop -t does
)
def test_a_handlers_stop_uses_the_requests_stop_timeout_unless_given_one(stop_timeout, grace, stopped_with):
    client = _Client()
    handler = ExecutionHandler(_request(stop_timeout=stop_timeout), client, grace=30.0, keep=False, oom=None)
    handler.container_id, handler._running = "c1", True
    handler.cancel(grace)
    assert client.stops.get(timeout=5) == ("c1", stopped_with)


def test_an_execution_run_cancels_with_the_requests_stop_timeout():
    cancels = []
    executor = SimpleNamespace(cancel=lambda execution_id, grace_seconds: cancels.append(grace_seconds))
    runtime = SimpleNamespace(settings=WorkerSettings.load({"DOCKRQ_STOP_GRACE_SECONDS": "30"}), executor=executor)
    run = ExecutionRun(runtime, None, {})
    run.execution_id = "e1"
    assert run.stop_grace == 30
    run._stop_timeout = 4  # set from the request once it passed the policy
    run.cancel("test")
    assert run.stop_grace == 4 and cancels == [4]


def test_an_adopters_shutdown_waits_for_the_longest_stop_timeout_it_adopted(monkeypatch):
    adoptions = Adoptions(worker=None, runtime=None, rq_ttl=60)
    stopped = []
    for eid, grace in (("short", 10.0), ("long", 45.0)):
        run = SimpleNamespace(stop_grace=grace, shut_down=lambda eid=eid: stopped.append(eid))
        adoptions._active[eid] = SimpleNamespace(run=run, thread=None)
    waited = []
    monkeypatch.setattr(adoptions, "wait", lambda timeout=None: waited.append(timeout) or True)
    adoptions.shut_down(30)
    assert sorted(stopped) == ["long", "short"] and waited == [75.0]
