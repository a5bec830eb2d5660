"""Issue 10, failing inputs from real workloads: the Docker executor on the real daemon.

Each test is one case's right value; the same cases end to end through a worker,
Redis and the CLI are in test_real_workloads_service.py.
"""

from __future__ import annotations

import os
import threading

import time

import pytest

from schemas import ExecutionRequest, ExecutionStatus
from worker.executor import LABEL_EXECUTION, GpuUnavailableError, new_executor
from worker.executor import handler as handler_module
from worker.executor.client import DockerClient
from worker.executor.spec import ExecutorPolicy, build_container_spec

pytestmark = pytest.mark.integration

CHILD_OOM = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?; exit 0"


class HeldWait(DockerClient):
    """A client whose ``wait`` returns the exit code only when the test says so: the
    container has exited, its result is not collected yet (a busy worker)."""

    def __init__(self) -> None:
        super().__init__()
        self.exited = threading.Event()
        self.release = threading.Event()

    def wait(self, container_id: str) -> int:
        code = super().wait(container_id)
        self.exited.set()
        assert self.release.wait(60)
        return code


class LateAttach(DockerClient):
    """A client whose attach to an already running container is made only once that
    container has exited: the daemon's race where an attach is hooked up after the end."""

    def attach(self, container_id: str, *, logs: bool, stdin: bool = False):
        if logs:
            self.api.wait(container_id, timeout=None)
        return super().attach(container_id, logs=logs, stdin=stdin)


@pytest.fixture
def make_executor(docker_client, unique):
    made = []

    def make(client: DockerClient | None = None):
        ex = new_executor(f"test-{unique}-{len(made)}", stop_grace_seconds=1.0, client=client)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.cleanup()
        ex.close()


def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _req(test_image, eid, *cmd, **extra):
    return {"execution_id": eid, "engine": {"image": test_image, "cmd": list(cmd)}, **extra}


def _leftover(ex, request: dict, *, name: str | None = None, run: bool = True) -> str:
    """Create (and run to its end unless ``run`` is False) the container a dead predecessor
    would have left: this executor's labels, its name or ``name``."""
    api = ex.client.api
    spec = build_container_spec(ExecutionRequest.model_validate(request), ex.executor_id, ExecutorPolicy())
    created = api.create_container(
        spec.image, name=name or spec.name, host_config=api.create_host_config(**spec.host_config), **spec.create
    )
    if run:
        api.start(created["Id"])
    return created["Id"]


# -- 1. an OOM kill inside the container does not decide the status; the main process does --------


def test_child_oom_killed_while_main_exits_0_succeeds_and_is_counted(make_executor, test_image):
    result = make_executor().run(_req(test_image, "child-oom", "sh", "-c", CHILD_OOM, resources={"memory": "32m"}))
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.SUCCEEDED, 0, "dd=137\n")
    assert result.oom_killed is False
    assert result.oom_kills >= 1


def test_main_process_oom_killed_is_failed_and_oom_killed(make_executor, test_image):
    result = make_executor().run(
        _req(test_image, "main-oom", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", resources={"memory": "32m"})
    )
    assert (result.status, result.exit_code, result.oom_killed) == (ExecutionStatus.FAILED, 137, True)
    assert result.oom_kills >= 1


def test_exit_137_without_oom_is_neither(make_executor, test_image):
    result = make_executor().run(_req(test_image, "exit-137", "sh", "-c", "exit 137"))
    assert (result.status, result.exit_code, result.oom_killed, result.oom_kills) == (ExecutionStatus.FAILED, 137, False, 0)


# -- 4. an exited leftover is read at once ----------------------------------------------------------


def test_exited_leftover_is_adopted_and_read_at_once(make_executor, test_image, monkeypatch):
    # A drain that waited for the attach would now take ten minutes instead of 30 s.
    monkeypatch.setattr(handler_module, "DRAIN_SECONDS", 600.0)
    ex = make_executor()
    request = _req(test_image, "exited-left", "sh", "-c", "echo out; echo err >&2; exit 3")
    leftover = _leftover(ex, request)
    ex.client.api.wait(leftover)
    ex.start(request)
    result = ex.wait("exited-left").result(timeout=20)
    assert (result.status, result.exit_code, result.container_id) == (ExecutionStatus.FAILED, 3, leftover)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert ex.info("exited-left").adopted


def test_attach_hooked_up_after_the_exit_still_ends_with_the_whole_output(make_executor, test_image, monkeypatch):
    monkeypatch.setattr(handler_module, "DRAIN_SECONDS", 600.0)
    ex = make_executor(LateAttach())
    request = _req(test_image, "late-attach", "sh", "-c", "echo one; sleep 1; echo two >&2; printf three")
    leftover = _leftover(ex, request)  # running when adopted; the attach comes after its end
    ex.start(request)
    result = ex.wait("late-attach").result(timeout=30)
    assert (result.status, result.container_id) == (ExecutionStatus.SUCCEEDED, leftover)
    assert (result.stdout, result.stderr) == ("one\nthree", "two\n")


# -- 5. leftovers are found by labels, whatever their name ------------------------------------------


@pytest.mark.parametrize("state", ["running", "created", "exited"])
def test_leftover_under_another_name_is_adopted_not_doubled(make_executor, test_image, docker_client, state):
    ex = make_executor()
    eid = f"renamed-{state}"
    request = _req(test_image, eid, "sh", "-c", "hostname; sleep 1")
    leftover = _leftover(ex, request, name=f"old-scheme-{ex.executor_id}-{eid}", run=state != "created")
    if state == "exited":
        ex.client.api.wait(leftover)
    ex.start(request)
    result = ex.wait(eid).result(timeout=30)
    assert (result.status, result.container_id) == (ExecutionStatus.SUCCEEDED, leftover)
    assert result.stdout == leftover[:12] + "\n"  # its hostname: the leftover ran it, nothing else
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"{LABEL_EXECUTION}={eid}"})


# -- 7. every start error leaves a finished execution -----------------------------------------------


@pytest.mark.skipif(os.path.exists("/dev/dri") or os.path.exists("/dev/kfd"), reason="this host has GPU device nodes")
@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_missing_gpu_device_nodes_leave_a_finished_error_execution(make_executor, test_image, vendor):
    ex = make_executor()
    eid = f"gpu-{vendor}"
    with pytest.raises(GpuUnavailableError):
        ex.start(_req(test_image, eid, "true", resources={"gpus": {"vendor": vendor, "count": -1}}))
    result = ex.wait(eid).result(timeout=5)
    assert (result.status, result.error_code) == (ExecutionStatus.ERROR, "gpu_unavailable")
    assert "/dev/dri" in result.error_msg


def test_an_unexpected_start_failure_leaves_a_finished_error_execution(make_executor, test_image):
    class Broken(DockerClient):
        def start(self, container_id: str) -> None:
            raise KeyError("surprise")

    ex = make_executor(Broken())
    with pytest.raises(Exception) as raised:
        ex.start(_req(test_image, "broken", "true"))
    result = ex.wait("broken").result(timeout=5)
    assert (result.status, result.error_code) == (ExecutionStatus.ERROR, "start_failed")
    assert "surprise" in result.error_msg and raised.value.code == "start_failed"


# -- 8. a late stop does not rewrite how the container ended ----------------------------------------


def test_cancel_after_the_container_exited_keeps_its_own_status(make_executor, test_image):
    client = HeldWait()
    ex = make_executor(client)
    ex.start(_req(test_image, "late-cancel", "echo", "done"))
    assert client.exited.wait(30)
    ex.cancel("late-cancel")  # exited 0, result not collected yet
    client.release.set()
    result = ex.wait("late-cancel").result(timeout=30)
    assert (result.status, result.exit_code, result.stdout) == (ExecutionStatus.SUCCEEDED, 0, "done\n")


def test_timeout_firing_after_the_container_exited_keeps_its_own_status(make_executor, test_image):
    client = HeldWait()
    ex = make_executor(client)
    ex.start(_req(test_image, "late-timeout", "sh", "-c", "exit 4", timeout_seconds=0.5))
    assert client.exited.wait(30)
    _until(lambda: ex._handlers["late-timeout"]._stop_reason is not None)  # the request's timer fired
    client.release.set()
    result = ex.wait("late-timeout").result(timeout=30)
    assert (result.status, result.exit_code) == (ExecutionStatus.FAILED, 4)


def test_cancel_that_stops_the_container_is_cancelled(make_executor, test_image):
    ex = make_executor()
    ex.start(_req(test_image, "stopped", "sleep", "300"))
    ex.cancel("stopped")
    assert ex.wait("stopped").result(timeout=30).status is ExecutionStatus.CANCELLED


def test_docker_client_stop_says_whether_it_ended_the_container(make_executor, test_image):
    ex = make_executor()
    running = _leftover(ex, _req(test_image, "stop-probe", "sleep", "300"))
    assert ex.client.stop(running, 0) is True
    assert ex.client.stop(running, 0) is False  # 304 Not Modified: it had already stopped
    ex.client.remove(running)
    assert ex.client.stop(running, 0) is False  # 404: gone
