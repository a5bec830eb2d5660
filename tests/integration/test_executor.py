"""The Docker executor on the real daemon, one test per promised behaviour."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest

from schemas import ExecutionStatus, LogStreamRequest
from worker.executor import (
    LABEL_EXECUTION,
    LABEL_EXECUTOR,
    ContainerCreateError,
    DockerExecutor,
    DockerUnavailableError,
    ExecutionAlreadyFinished,
    ExecutionAlreadyStarted,
    ExecutionNotFound,
    GpuUnavailableError,
    ImagePullError,
    MountNotAllowed,
    RequestRejected,
    new_executor,
)
from worker.executor.client import DockerClient

pytestmark = pytest.mark.integration

GRACE = 1.0
MiB = 1024 * 1024


@pytest.fixture
def executor(docker_client, unique):
    ex = new_executor(f"test-{unique}", stop_grace_seconds=GRACE)
    yield ex
    ex.cleanup()
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"{LABEL_EXECUTOR}={ex.executor_id}"})
    ex.close()


def req(test_image, eid, *cmd, **extra):
    body = {"execution_id": eid, "engine": {"image": test_image, "cmd": list(cmd)}}
    engine = extra.pop("engine", {})
    body["engine"].update(engine)
    body.update(extra)
    return body


def labelled(docker_client, ex, eid=None):
    labels = [f"{LABEL_EXECUTOR}={ex.executor_id}"]
    if eid:
        labels.append(f"{LABEL_EXECUTION}={eid}")
    return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": labels})


# -- 1. construction ---------------------------------------------------------------
def test_new_executor_without_daemon_raises_and_is_installed_never_raises(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailableError):
        new_executor("nodaemon")
    offline = DockerExecutor(
        "nodaemon", client=DockerClient(docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41"))
    )
    assert offline.is_installed() is False


def test_is_installed_on_real_daemon(executor):
    assert executor.is_installed() is True


def test_empty_executor_id_refused():
    with pytest.raises(ValueError):
        new_executor("  ")


# -- 2. start ----------------------------------------------------------------------
def test_run_collects_exit_code_and_both_streams(executor, test_image):
    result = executor.run(req(test_image, "streams", "sh", "-c", "echo out; echo err >&2; exit 3"))
    assert result.status is ExecutionStatus.FAILED
    assert result.exit_code == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.started_at <= result.finished_at


def test_start_labels_container_and_refuses_second_start(executor, test_image, docker_client):
    executor.start(req(test_image, "labels", "sleep", "30"))
    [container] = labelled(docker_client, executor, "labels")
    assert container.labels[LABEL_EXECUTOR] == executor.executor_id
    assert container.labels[LABEL_EXECUTION] == "labels"
    assert executor.info("labels").container_id == container.id
    with pytest.raises(ExecutionAlreadyStarted):
        executor.start(req(test_image, "labels", "true"))
    executor.cancel("labels")
    executor.wait("labels").result(30)
    with pytest.raises(ExecutionAlreadyFinished):
        executor.start(req(test_image, "labels", "true"))


def test_concurrent_starts_of_one_id_make_one_container(executor, test_image, docker_client):
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def start():
        barrier.wait()
        try:
            executor.start(req(test_image, "twin", "sleep", "5"))
            outcomes.append("started")
        except ExecutionAlreadyStarted:
            outcomes.append("refused")

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["refused", "refused", "refused", "started"]
    assert len(labelled(docker_client, executor, "twin")) == 1
    executor.cancel("twin")
    executor.wait("twin").result(30)


def test_leftover_container_is_adopted_not_started_twice(executor, test_image, docker_client, unique):
    # A predecessor (same node id) started the execution and died without cleaning up.
    predecessor = new_executor(executor.executor_id, keep_containers=True)
    predecessor.start(req(test_image, "leftover", "sh", "-c", "echo begin; sleep 2; echo end"))
    first_id = predecessor.info("leftover").container_id

    executor.start(req(test_image, "leftover", "sh", "-c", "echo begin; sleep 2; echo end"))
    info = executor.info("leftover")
    assert info.adopted is True
    assert info.container_id == first_id
    result = executor.wait("leftover").result(30)
    assert result.status is ExecutionStatus.SUCCEEDED
    # history replayed once and followed to the end: the container ran once
    assert result.stdout == "begin\nend\n"
    predecessor.wait("leftover").result(30)
    predecessor.close()


def test_missing_image_offline_is_a_clear_pull_error_not_a_hang(docker_client, unique):
    # Offline, the registry may refuse at once or never answer: either way the pull ends in an
    # ImagePullError naming the image, at the latest at the pull deadline (30 s here, 300 s by
    # default), so a bound well past that deadline fails only if the pull really hangs.
    executor = new_executor(f"test-{unique}", stop_grace_seconds=GRACE, pull_timeout_seconds=30)
    try:
        started = time.monotonic()
        with pytest.raises(ImagePullError) as err:
            executor.start({"execution_id": "nopull", "engine": {"image": "dockrq-test/does-not-exist:1"}})
        assert "does-not-exist" in str(err.value)
        assert time.monotonic() - started < 120
        result = executor.wait("nopull").result(5)
        assert result.status is ExecutionStatus.ERROR
        assert result.error_code == "image_pull"
    finally:
        executor.cleanup()
        executor.close()
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"{LABEL_EXECUTOR}={executor.executor_id}"})


def test_pull_policy_never_refuses_missing_image(executor):
    with pytest.raises(ImagePullError, match="never"):
        executor.start(
            {"execution_id": "never", "engine": {"image": "dockrq-test/absent:1"}, "pull_policy": "never"}
        )


def test_create_error_is_typed_and_leaves_no_container(executor, test_image, docker_client):
    with pytest.raises(ContainerCreateError):
        executor.start(req(test_image, "badcmd", "/no/such/binary"))
    result = executor.wait("badcmd").result(5)
    # named by its reason (worker/executor/refusals.py; tests/integration/test_start_refusals.py)
    assert result.status is ExecutionStatus.ERROR and result.error_code == "command_not_found"
    assert labelled(docker_client, executor, "badcmd") == []


def test_invalid_request_is_rejected_before_docker(executor, docker_client):
    with pytest.raises(RequestRejected, match="engine.image"):
        executor.start({"execution_id": "bad", "engine": {}})
    with pytest.raises(ExecutionNotFound):
        executor.wait("bad").result(1)


# -- 3. wait -------------------------------------------------------------------
def test_wait_unknown_fails_at_once(executor):
    future = executor.wait("nobody")
    assert future.done()
    with pytest.raises(ExecutionNotFound):
        future.result(0)


def test_many_waiters_and_cancelled_waiter_do_not_disturb(executor, test_image):
    executor.start(req(test_image, "waiters", "sh", "-c", "sleep 1; echo done"))
    futures = [executor.wait("waiters") for _ in range(5)]
    futures[0].cancel()
    results = [f.result(30) for f in futures[1:]]
    assert {r.stdout for r in results} == {"done\n"}
    late = executor.wait("waiters").result(1)
    assert late == results[0]


# -- 4. cancel -------------------------------------------------------------------
def test_cancel_running_execution(executor, test_image, docker_client, monkeypatch):
    graces = []
    real_stop = executor.client.stop
    monkeypatch.setattr(executor.client, "stop", lambda cid, grace: graces.append(grace) or real_stop(cid, grace))
    executor.start(req(test_image, "cancelme", "sleep", "300"))
    executor.cancel("cancelme")
    result = executor.wait("cancelme").result(30)  # ended by the cancel: left alone it runs 300 s
    assert result.status is ExecutionStatus.CANCELLED
    assert graces == [GRACE]  # docker stop with the executor's grace, not Docker's default 10 s
    assert labelled(docker_client, executor, "cancelme") == []
    with pytest.raises(ExecutionAlreadyFinished):
        executor.cancel("cancelme")
    with pytest.raises(ExecutionNotFound):
        executor.cancel("nobody")


def test_sigterm_is_sent_before_sigkill(executor, test_image):
    script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    executor.start(req(test_image, "term", "sh", "-c", script))
    stream = executor.get_log_stream(LogStreamRequest(execution_id="term", tail=True, follow=True))
    assert next(iter(stream)).data == "ready\n"
    executor.cancel("term", grace_seconds=5)
    result = executor.wait("term").result(30)
    assert result.status is ExecutionStatus.CANCELLED
    assert "got-term" in result.stdout


# -- 5. logs -------------------------------------------------------------------
def test_log_tail_follow_order_and_streams(executor, test_image):
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.05; done"
    executor.start(req(test_image, "logs", "sh", "-c", script))
    followed = list(executor.get_log_stream(LogStreamRequest(execution_id="logs", tail=True, follow=True)))
    out = "".join(e.data for e in followed if e.stream == "stdout")
    err = "".join(e.data for e in followed if e.stream == "stderr")
    assert out == "".join(f"out{i}\n" for i in range(1, 6))
    assert err == "".join(f"err{i}\n" for i in range(1, 6))
    assert [e.ts for e in followed] == sorted(e.ts for e in followed)
    executor.wait("logs").result(30)
    # finished: tail still works, follow ends at once
    again = list(executor.get_log_stream(LogStreamRequest(execution_id="logs", tail=True, follow=True)))
    assert again == followed
    assert list(executor.get_log_stream(LogStreamRequest(execution_id="logs", tail=False, follow=True))) == []
    with pytest.raises(ExecutionNotFound):
        executor.get_log_stream(LogStreamRequest(execution_id="nobody"))


def test_follow_without_tail_sees_only_new_output(executor, test_image):
    executor.start(req(test_image, "newonly", "sh", "-c", "echo first; sleep 1.5; echo second"))
    stream = executor.get_log_stream(LogStreamRequest(execution_id="newonly", tail=True, follow=True))
    assert next(iter(stream)).data == "first\n"
    fresh = executor.get_log_stream(LogStreamRequest(execution_id="newonly", tail=False, follow=True))
    assert [e.data for e in fresh] == ["second\n"]


def test_follow_waits_for_an_execution_still_starting(executor, test_image):
    got: list[str] = []
    starter = threading.Thread(target=executor.start, args=(req(test_image, "early", "echo", "hello"),))
    starter.start()
    deadline = time.monotonic() + 30
    while "early" not in executor.executions():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    got = [e.data for e in executor.get_log_stream(LogStreamRequest(execution_id="early", tail=True, follow=True))]
    starter.join(30)
    assert got == ["hello\n"]


# -- 6. run and time limits -------------------------------------------------------
def test_timeout_seconds_is_timed_out_and_container_gone(executor, test_image, docker_client):
    # run's own timeout is only a guard (TimeoutError if the execution's limit never fired):
    # TIMED_OUT means its 1 s limit ended it, long before its 300 s sleep would have.
    result = executor.run(req(test_image, "slow", "sleep", "300", timeout_seconds=1), timeout=60)
    assert result.status is ExecutionStatus.TIMED_OUT
    assert labelled(docker_client, executor, "slow") == []


def test_run_timeout_cancels_and_raises(executor, test_image, docker_client):
    with pytest.raises(TimeoutError):
        executor.run(req(test_image, "runtimeout", "sleep", "300"), timeout=1)
    assert executor.wait("runtimeout").result(1).status is ExecutionStatus.CANCELLED
    assert labelled(docker_client, executor, "runtimeout") == []


# -- 7. cleanup ------------------------------------------------------------------
def test_cleanup_removes_every_labelled_object(docker_client, test_image, unique):
    ex = new_executor(f"clean-{unique}", keep_containers=True, stop_grace_seconds=GRACE)
    label = {LABEL_EXECUTOR: ex.executor_id}
    ex.run(req(test_image, "kept", "true"))
    ex.start(req(test_image, "running", "sleep", "300"))
    network = docker_client.networks.create(f"dockrq-net-{unique}", labels=label)
    volume = docker_client.volumes.create(f"dockrq-vol-{unique}", labels=label)
    assert len(labelled(docker_client, ex)) == 2

    report = ex.cleanup()
    assert len(report.containers) == 2
    assert network.id in report.networks and volume.name in report.volumes
    assert labelled(docker_client, ex) == []
    assert docker_client.networks.list(filters={"label": f"{LABEL_EXECUTOR}={ex.executor_id}"}) == []
    assert docker_client.volumes.list(filters={"label": f"{LABEL_EXECUTOR}={ex.executor_id}"}) == []
    assert ex.executions() == []
    assert ex.wait("running").exception(0) is not None  # state forgotten
    ex.close()


def test_containers_are_removed_after_collection_unless_kept(executor, test_image, docker_client):
    executor.run(req(test_image, "gone", "true"))
    assert labelled(docker_client, executor, "gone") == []


# -- 8. output -----------------------------------------------------------------
def test_both_streams_flooding_at_once_finish_truncated(executor, test_image):
    script = "head -c 4194304 /dev/zero | tr '\\0' e >&2 & head -c 4194304 /dev/zero | tr '\\0' o; wait"
    result = executor.run(req(test_image, "flood", "sh", "-c", script), timeout=120)
    assert result.status is ExecutionStatus.SUCCEEDED
    assert result.stdout_truncated and result.stderr_truncated
    assert result.stdout == "o" * 1024 * 1024
    assert result.stderr == "e" * 1024 * 1024


def test_nul_bytes_and_invalid_utf8_do_not_cut_output(executor, test_image):
    result = executor.run(req(test_image, "binary", "sh", "-c", r"printf 'a\000b\377\376c\n'; echo after"))
    assert result.stdout == "a\x00b\ufffd\ufffdc\nafter\n"


def test_memory_stays_flat_while_a_container_writes_a_lot(executor, test_image):
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    before = proc.memory_info().rss
    # 192 MiB: 192 times the 1 MiB cap, three times the growth allowed below (as x's: dockerd's
    # json-file log of the container writes each NUL byte as a six-character escape, much slower)
    result = executor.run(
        req(test_image, "huge", "sh", "-c", f"head -c {192 * MiB} /dev/zero | tr '\\0' x"), timeout=300
    )
    after = proc.memory_info().rss
    assert result.stdout_truncated and result.stdout == "x" * MiB
    assert after - before < 64 * MiB


# -- 9. classification ----------------------------------------------------------------
def test_exit_137_alone_is_not_oom(executor, test_image):
    result = executor.run(req(test_image, "selfkill", "sh", "-c", "sleep 60 & kill -KILL $!; wait $!"))
    assert result.exit_code == 137
    assert result.status is ExecutionStatus.FAILED
    assert result.oom_killed is False


def test_memory_limit_oom_is_detected(executor, test_image):
    result = executor.run(
        req(test_image, "oom", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", resources={"memory": "16m"})
    )
    assert result.status is ExecutionStatus.FAILED
    assert result.oom_killed is True


# -- 10. limits and safety ------------------------------------------------------------
def test_limits_become_real_cgroup_limits(executor, test_image, docker_client):
    ex = new_executor(executor.executor_id, keep_containers=True)
    script = (
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max;"
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max;"
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
    )
    result = ex.run(req(test_image, "limits", "sh", "-c", script, resources={"cpus": 0.5, "memory": "64m", "pids": 50}))
    numbers = result.stdout.split()
    quota, period = int(numbers[0]), int(numbers[1])
    assert quota / period == pytest.approx(0.5)
    assert int(numbers[2]) == 64 * 1024 * 1024
    assert numbers[3] == "50"
    host = docker_client.api.inspect_container(result.container_id)["HostConfig"]
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    ex.close()


def test_network_none_by_default_bridge_when_asked(executor, test_image):
    none = executor.run(req(test_image, "netnone", "ls", "/sys/class/net"))
    assert none.stdout.split() == ["lo"]
    bridge = executor.run(req(test_image, "netbridge", "ls", "/sys/class/net", network="bridge"))
    assert "eth0" in bridge.stdout.split()


def test_working_dir_entrypoint_cmd_env(executor, test_image):
    result = executor.run(
        req(
            test_image,
            "engine",
            "-c",
            'pwd; echo "$GREETING $0"',
            engine={"entrypoint": ["sh"], "working_dir": "/tmp", "env": {"GREETING": "hello"}},
        )
    )
    assert result.stdout == "/tmp\nhello sh\n"


def test_bind_mounts_only_below_allowed_roots(docker_client, test_image, tmp_path, unique):
    (tmp_path / "data.txt").write_text("from host\n")
    ex = new_executor(f"mounts-{unique}", allowed_mount_roots=[str(tmp_path)])
    ok = ex.run(
        req(test_image, "mountok", "cat", "/data/data.txt", mounts=[{"source": str(tmp_path), "target": "/data"}])
    )
    assert ok.stdout == "from host\n"
    with pytest.raises(MountNotAllowed, match="mounts.0.source"):
        ex.start(req(test_image, "mountbad", "true", mounts=[{"source": "/etc", "target": "/x"}]))
    assert labelled(docker_client, ex, "mountbad") == []
    ex.cleanup()
    ex.close()


def test_gpu_request_on_a_daemon_without_gpus_is_clear(executor, test_image):
    with pytest.raises(GpuUnavailableError, match="gpus"):
        executor.start(req(test_image, "gpu", "true", resources={"gpus": {"count": 1}}))
    assert executor.wait("gpu").result(5).error_code == "gpu_unavailable"


# -- 11. concurrency and state ----------------------------------------------------------
def test_many_executions_at_once(executor, test_image):
    ids = [f"many{i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: executor.run(req(test_image, i, "sh", "-c", f"echo {i}")), ids))
    assert [r.stdout for r in results] == [f"{i}\n" for i in ids]
    for i in ids:
        executor.forget(i)
    assert executor.executions() == []


def test_finished_state_expires_after_retention(docker_client, test_image, unique):
    ex = new_executor(f"retain-{unique}", retention_seconds=0.2)
    ex.run(req(test_image, "old", "true"))
    time.sleep(0.3)
    ex.run(req(test_image, "new", "true"))  # a start prunes what expired
    assert ex.executions() == ["new"]
    ex.cleanup()
    ex.close()


def test_keep_containers_for_debugging(docker_client, test_image, unique):
    ex = new_executor(f"keep-{unique}", keep_containers=True)
    result = ex.run(req(test_image, "kept", "true"))
    assert docker_client.containers.get(result.container_id).status == "exited"
    ex.cleanup()
    ex.close()
