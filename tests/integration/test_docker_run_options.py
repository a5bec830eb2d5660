"""docker run options on the real daemon: each one proven from inside the container
(issue 10). A real dockrq-worker, real Redis, real dockerd; `dockrq` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from schemas import ExecutionStatus

from dockrq_cli import at_once

pytestmark = pytest.mark.integration

NET_ADMIN = 1 << 12  # capabilities(7) bit numbers
SYS_ADMIN = 1 << 21


def req(image, name, *cmd, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"  # rq job ids share one keyspace whatever the prefix
    engine = {"image": image, "cmd": list(cmd), **fields.pop("engine", {})}
    return {"execution_id": eid, "engine": engine, **fields}


def run(producer, request, timeout=60):
    outcome = producer.wait(producer.submit(request), timeout=timeout)
    assert outcome.result is not None, outcome
    return outcome


def sh(image, name, script, **fields):
    return req(image, name, "sh", "-c", script, **fields)


def cap_eff(stdout: str) -> int:
    (line,) = [l for l in stdout.splitlines() if l.startswith("CapEff:")]
    return int(line.split()[1], 16)


def mount_line(stdout: str, target: str) -> str:
    (line,) = [l for l in stdout.splitlines() if l.split()[1:2] == [target]]
    return line


@pytest.fixture
def worker(spawn_worker):
    return spawn_worker("--allow-cap", "NET_ADMIN", "--max-stop-timeout", "5", stop_grace=30.0)


def test_user_read_only_tmpfs_and_shm_size_inside_the_container(producer, worker, test_image):
    out = run(producer, req(test_image, "user", "id", engine={"user": "1000:1000"}))
    assert out.status == ExecutionStatus.SUCCEEDED and out.result.stdout.startswith("uid=1000 gid=1000"), out.result
    assert run(producer, req(test_image, "root", "id")).result.stdout.startswith("uid=0 gid=0")

    script = "touch /x 2>&1; echo touch=$?; echo data > /scratch/ok && echo scratch=$?; cat /proc/mounts"
    out = run(
        producer,
        sh(test_image, "rofs", script, read_only=True, tmpfs=[{"target": "/scratch", "size": "1m"}],
           resources={"shm_size": "256m"}),
    )
    stdout = out.result.stdout
    assert "Read-only file system" in stdout and "touch=1" in stdout and "scratch=0" in stdout, stdout
    assert mount_line(stdout, "/").split()[3].split(",")[0] == "ro"
    scratch = mount_line(stdout, "/scratch")
    assert scratch.split()[2] == "tmpfs" and "size=1024k" in scratch, scratch
    assert "size=262144k" in mount_line(stdout, "/dev/shm")
    # without the options: a writable root and Docker's 64 MiB /dev/shm
    plain = run(producer, sh(test_image, "plain", "touch /x; echo touch=$?; cat /proc/mounts")).result.stdout
    assert "touch=0" in plain and "size=65536k" in mount_line(plain, "/dev/shm")


def test_capabilities_from_proc_self_status_and_the_policy(producer, worker, test_image):
    status = "cat /proc/self/status"
    default = cap_eff(run(producer, sh(test_image, "caps", status)).result.stdout)
    assert default and not default & NET_ADMIN
    assert cap_eff(run(producer, sh(test_image, "drop", status, cap_drop=["ALL"])).result.stdout) == 0
    added = cap_eff(run(producer, sh(test_image, "add", status, cap_add=["NET_ADMIN"])).result.stdout)
    assert added == default | NET_ADMIN
    only = cap_eff(run(producer, sh(test_image, "only", status, cap_drop=["ALL"], cap_add=["NET_ADMIN"])).result.stdout)
    assert only == NET_ADMIN

    refused = producer.wait(producer.submit(sh(test_image, "sysadmin", status, cap_add=["SYS_ADMIN"])), timeout=30)
    assert refused.status == ExecutionStatus.REJECTED and refused.result is None
    assert refused.error.message == (
        "cap_add: SYS_ADMIN is not allowed on this worker (allowed: NET_ADMIN) (DOCKRQ_ALLOWED_CAPS)"
    )


def test_ulimit_and_init(producer, worker, test_image):
    limits = [{"name": "nofile", "soft": 1024, "hard": 2048}]
    out = run(producer, sh(test_image, "ulimit", "ulimit -n; ulimit -Hn", ulimits=limits))
    assert out.result.stdout == "1024\n2048\n"

    pid1 = "tr '\\0' ' ' < /proc/1/cmdline; echo"
    with_init = run(producer, sh(test_image, "init", pid1, init=True)).result.stdout
    assert with_init.split()[0].endswith("docker-init"), with_init
    without = run(producer, sh(test_image, "noinit", pid1)).result.stdout
    assert without.split()[0] == "sh", without


def test_stop_signal_trap_labels_and_stop_timeout_on_cancel(producer, worker, test_image, docker_client):
    # The trap writes what it got; the worker's grace is 30 s, the request's own stop timeout 2 s.
    script = "trap 'echo got USR1; exit 7' USR1; echo ready; while true; do sleep 0.1; done"
    request = sh(test_image, "stopsig", script, stop_signal="USR1", stop_timeout=2, labels={"team": "ml", "run": "7"})
    eid = producer.submit(request)
    for entry in producer.logs(eid, follow=True):
        if entry.data == "ready\n":
            break
    (container,) = docker_client.containers.list(ignore_removed=True, filters={"label": f"dockrq.execution={eid}"})
    config = container.attrs["Config"]
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGUSR1", 2)
    assert config["Labels"]["team"] == "ml" and config["Labels"]["run"] == "7"
    assert config["Labels"]["dockrq.executor"] == worker.executor_id
    producer.cancel(eid)
    outcome = producer.wait(eid, timeout=20)
    assert outcome.status == ExecutionStatus.CANCELLED
    assert "got USR1" in outcome.result.stdout and outcome.result.exit_code == 7

    # A container that ignores its stop signal is killed after the request's 2 s, not the worker's 30.
    stubborn = sh(test_image, "stubborn", "trap '' TERM; echo ready; while true; do sleep 0.1; done", stop_timeout=2)
    eid = producer.submit(stubborn)
    for entry in producer.logs(eid, follow=True):
        if entry.data == "ready\n":
            break
    producer.cancel(eid)
    outcome = producer.wait(eid, timeout=20)  # well below the worker's grace
    assert outcome.status == ExecutionStatus.CANCELLED and outcome.result.exit_code == 137

    over = producer.wait(producer.submit(sh(test_image, "long", "true", stop_timeout=6)), timeout=30)
    assert over.status == ExecutionStatus.REJECTED
    assert over.error.message == "stop_timeout: 6 is above this worker's limit 5 (DOCKRQ_MAX_STOP_TIMEOUT_SECONDS)"


def test_a_dead_workers_container_is_stopped_with_its_own_stop_timeout(spawn_worker, producer, docker_client, test_image):
    """Another node's reaper stops the container of a worker that died with the request's
    stop_timeout (its Config.StopTimeout), not the reaper's own 10-minute grace."""
    from scripts.faults import FAST_REAP_ENV

    doomed = spawn_worker(env=FAST_REAP_ENV)
    request = sh(test_image, "reaped", "trap '' TERM; echo ready; while true; do sleep 0.1; done", stop_timeout=1)
    eid = producer.submit(request)
    for entry in producer.logs(eid, follow=True):
        if entry.data == "ready\n":
            break
    other = f"{spawn_worker.executor_id}-b"
    try:
        # the other node starts while the dead one's heartbeat grows stale (its job is taken already)
        spawn_worker("--executor-id", other, stop_grace=600.0, env=FAST_REAP_ENV, ready=False)
        doomed.kill()
        # The reaper stops the container before it writes the outcome: with its own 600 s grace
        # this wait would time out; with the request's 1 s the lost outcome comes in seconds.
        outcome = producer.wait(eid, timeout=60)
        assert (outcome.status, outcome.error.code) == (ExecutionStatus.LOST, "worker_lost")
        assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})
    finally:
        for c in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={other}"}):
            c.remove(force=True)


# -- the dockrq CLI, as the README writes it ---------------------------------------------


def dockrq(spawn_worker, redis_url, *args, input: bytes | None = None, env: dict | None = None):
    entry = Path(sys.executable).with_name("dockrq")
    environ = {
        **os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_PREFIX": spawn_worker.prefix,
        "DOCKRQ_QUEUE": spawn_worker.queue, **(env or {}),
    }
    return subprocess.run([str(entry), *args], input=input, capture_output=True, timeout=120, env=environ)


def test_cli_interactive_env_file_and_usage_errors(spawn_worker, worker, redis_url, test_image, tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("GREETING=hello from a file\n# comment\nNAME=file\n")
    name = f"envf-{uuid.uuid4().hex[:8]}"
    binary = bytes(range(256)) * 4
    call = partial(dockrq, spawn_worker, redis_url)
    # independent calls (each its own execution, or none), run at the same time
    piped, echoed, counted, dropped, too_much, out, bogus, as_json = at_once(
        # echo piped | dockrq submit -i IMAGE cat
        partial(call, "submit", "-i", test_image, "cat", input=b"piped\n"),
        partial(call, "submit", "--rm", "-i", test_image, "sh", "-c", "cat; echo end", input=binary),
        partial(call, "submit", "-i", test_image, "wc", "-c", input=binary),
        partial(call, "submit", test_image, "cat", input=b"dropped"),
        partial(call, "submit", "-i", test_image, "cat", input=b"x" * (512 * 1024 + 1)),
        partial(
            call, "submit", "--name", name, "--env-file", str(env_file), "-e", "NAME=flag",
            "-m", "64m", "-u", "1000", test_image, "sh", "-c", 'echo "$GREETING $NAME $(id -u)"; cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes',
        ),
        partial(call, "submit", "--bogus", test_image),
        partial(call, "--json", "submit", "--bogus", test_image),
    )
    assert (piped.returncode, piped.stdout) == (0, b"piped\n"), piped.stderr
    assert echoed.stdout.endswith(b"end\n") and echoed.returncode == 0
    assert counted.stdout.strip() == b"1024"
    # without -i the container's stdin is empty, whatever is piped to dockrq
    assert dropped.stdout == b""

    assert too_much.returncode == 125 and b"stdin_base64: more than 524288 bytes" in too_much.stderr

    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == ["hello from a file flag 1000", str(64 * 1024**2)]
    status = dockrq(spawn_worker, redis_url, "status", name)
    assert status.returncode == 0 and b"succeeded" in status.stdout  # --name is the execution id

    assert bogus.returncode == 125 and b"No such option" in bogus.stderr and b"--bogus" in bogus.stderr
    assert as_json.returncode == 125 and b'"exit_code": 125' in as_json.stdout


def test_job_description_runs_as_pasted_into_docker_run(producer, worker, test_image, unique):
    """The rq job description (what the dashboard shows) is a docker run line that, pasted into a
    shell with the real env value, runs the same container: same user, caps, mounts, limits, stdin."""
    import shlex

    from rq.job import Job
    from rq.serializers import JSONSerializer

    script = (
        "cat; id; grep CapEff /proc/self/status; ulimit -n; grep -E ' /scratch | /dev/shm ' /proc/mounts; "
        "touch /x 2>/dev/null || echo read-only; echo $TOKEN; tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1"
    )
    request = sh(
        test_image, "describe", script, engine={"user": "1000:1000", "env": {"TOKEN": "s3cret"}},
        read_only=True, tmpfs=[{"target": "/scratch", "size": "1m"}], resources={"shm_size": "128m"},
        cap_drop=["ALL"], cap_add=["NET_ADMIN"], ulimits=[{"name": "nofile", "soft": 512, "hard": 1024}], init=True,
        stop_signal="SIGUSR1", stop_timeout=3, labels={"dockrq-test-describe": unique},
        stdin_base64="cGlwZWQK",  # "piped\n"
    )
    via_dockrq = run(producer, request)
    assert via_dockrq.status == ExecutionStatus.SUCCEEDED, via_dockrq.result
    description = Job.fetch(via_dockrq.execution_id, connection=producer.connection, serializer=JSONSerializer).description
    assert "s3cret" not in description
    words = shlex.split(description.replace("TOKEN=***", "TOKEN=s3cret"))
    pasted = subprocess.run(words, input=b"piped\n", capture_output=True, timeout=60)
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.decode() == via_dockrq.result.stdout
    assert via_dockrq.result.stdout.startswith("piped\nuid=1000 gid=1000")
