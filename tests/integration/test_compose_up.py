"""`docker-compose up --build --scale worker=4` for real: the Dockerfile builds,
Redis, four workers and the dashboard come up, and executions submitted from
the host and from `docker-compose run` are spread over the workers.

No registry is reachable here, so the base images come from
scripts/offline_base.sh (Debian by debootstrap with python3, redis-server and
dockrq's dependencies); the compose file takes them through
DOCKRQ_PYTHON_IMAGE and DOCKRQ_REDIS_IMAGE exactly as an operator behind a
mirror would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# Bounds of the steps; the module's covers them all plus the tests and teardown.
BASE_IMAGE_TIMEOUT = 600  # scripts/offline_base.sh from scratch takes ~1.5 min
BUILD_TIMEOUT = 300
UP_TIMEOUT = 300
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "dockrq-test/python-offline:latest"
SCALE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project of this test module, driven through docker-compose."""

    def __init__(self, project: str) -> None:
        self.redis_port, self.dashboard_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "COMPOSE_PROJECT_NAME": project,
            "DOCKRQ_PYTHON_IMAGE": BASE_IMAGE,
            "DOCKRQ_REDIS_IMAGE": BASE_IMAGE,
            "DOCKRQ_IMAGE": f"dockrq-test/dockrq:{project}",
            "DOCKRQ_REDIS_PORT": str(self.redis_port),
            "DOCKRQ_DASHBOARD_PORT": str(self.dashboard_port),
            "DOCKRQ_STOP_GRACE_SECONDS": "2",
        }

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        binary = shutil.which("docker-compose")
        if binary is None:
            pytest.fail("docker-compose is needed (scripts/setup.sh installs it)")
        out = subprocess.run(
            [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
        )
        if check:
            assert out.returncode == 0, f"docker-compose {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out

    def dashboard(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.dashboard_port}/0{path}", timeout=10) as resp:
            return json.loads(resp.read())


def wait_for(what: str, probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - services are still coming up
            last = exc
        else:
            last = value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s (last: {last!r})")
        time.sleep(0.5)


def build_base_image() -> None:
    """scripts/offline_base.sh in its own session, so that a timeout (or pytest's) stops
    all of it (debootstrap, pip, docker import), not just bash."""
    script = subprocess.Popen(
        [str(ROOT / "scripts" / "offline_base.sh"), BASE_IMAGE],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    try:
        output, _ = script.communicate(timeout=BASE_IMAGE_TIMEOUT)
    except BaseException as exc:
        stop_session(script)
        if isinstance(exc, subprocess.TimeoutExpired):
            pytest.fail(f"scripts/offline_base.sh still running after {BASE_IMAGE_TIMEOUT} s:\n{script.communicate()[0]}")
        raise
    assert script.returncode == 0, output


def stop_session(proc: subprocess.Popen) -> None:
    # SIGTERM first: the script's trap unmounts what debootstrap mounted and removes its
    # temporary rootfs. Then SIGKILL whatever of the group outlived that (or bash).
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def stack(docker_client):
    build_base_image()

    s = Stack(f"dockrqt{os.getpid()}")
    try:
        s.compose("build", "--force-rm", timeout=BUILD_TIMEOUT)
        s.compose("up", "-d", "--scale", f"worker={SCALE}", timeout=UP_TIMEOUT)
        yield s
    finally:
        workers = docker_client.containers.list(
            ignore_removed=True, all=True, filters={"label": f"com.docker.compose.project={s.env['COMPOSE_PROJECT_NAME']}"}
        )
        executors = {c.attrs["Config"]["Hostname"] for c in workers}
        s.compose("down", "-v", "-t", "10", "--remove-orphans", check=False)
        for container in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": "dockrq.executor"}):
            if container.labels.get("dockrq.executor") in executors:
                container.remove(force=True)
        try:
            docker_client.images.remove(s.env["DOCKRQ_IMAGE"])
        except Exception:  # noqa: BLE001 - the image may be missing if the build failed
            pass


@pytest.fixture
def producer(stack):
    from producer import Producer

    p = Producer(redis_url=stack.redis_url)
    yield p
    p.close()


def test_scaled_workers_share_the_queue(stack, producer, test_image):
    import redis
    from rq import Queue, Worker

    queue = Queue("dockrq", connection=redis.Redis.from_url(stack.redis_url))
    workers = wait_for(f"{SCALE} workers", lambda: len(Worker.all(queue=queue)) == SCALE and Worker.all(queue=queue))
    assert len({w.hostname for w in workers}) == SCALE  # one per replica

    ids = producer.submit_many(
        [{"engine": {"image": test_image, "cmd": ["sh", "-c", "sleep 3; echo done"]}} for _ in range(2 * SCALE)]
    )
    outcomes = [producer.wait(eid, timeout=120) for eid in ids]
    assert [o.result.status for o in outcomes] == ["succeeded"] * len(ids)
    assert all(o.result.stdout == "done\n" for o in outcomes)
    ran_on = {producer.status(eid).worker for eid in ids}
    # Eight three-second executions on four idle workers: each worker runs some.
    assert len(ran_on) == SCALE, ran_on
    assert ran_on <= {w.name for w in workers}


def test_cli_in_the_image_submits_and_exits_with_the_container_code(stack, test_image):
    ok = stack.compose("run", "--rm", "worker", "dockrq", "submit", test_image, "echo", "hi-from-compose")
    assert "hi-from-compose" in ok.stdout

    failed = stack.compose("run", "--rm", "worker", "dockrq", "submit", test_image, "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3, failed.stdout + failed.stderr


def test_dashboard_lists_the_workers(stack):
    data = wait_for("dashboard workers", lambda: stack.dashboard("/data/workers.json"))
    assert len(data["workers"]) == SCALE
    assert {tuple(w["queues"]) for w in data["workers"]} == {("dockrq",)}
