"""Shared fixtures. Integration tests use the real redis-server and dockerd that
``scripts/setup.sh`` starts; unit tests use fakeredis and never touch Docker."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import settings

# The suite is a gate: the same examples every run, so a red build is a real
# regression and can be re-run. `HYPOTHESIS_PROFILE=explore` searches afresh each run;
# whatever it finds goes back into the tests as an @example.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TEST_IMAGE = os.environ.get("DOCKRQ_TEST_IMAGE", "dockrq-test/busybox:latest")
# Unset: the session starts a redis-server of its own, so two test runs on one
# machine (or a demo on :6379) never see each other's queues and workers.
TEST_REDIS_URL = os.environ.get("DOCKRQ_TEST_REDIS_URL")


@pytest.fixture
def test_image() -> str:
    return TEST_IMAGE


@pytest.fixture
def unique() -> str:
    """A short unique token for ids, queue names and prefixes of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    import redis

    if TEST_REDIS_URL:
        client = redis.Redis.from_url(TEST_REDIS_URL)
        try:
            client.ping()
        except redis.RedisError as exc:  # pragma: no cover - environment problem
            pytest.fail(f"real Redis needed at {TEST_REDIS_URL}: {exc}")
        client.flushdb()
        client.close()
        yield TEST_REDIS_URL
        return

    from scripts.faults import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), durable=False)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:  # pragma: no cover - environment problem
        pytest.fail(f"redis-server is needed on PATH (run scripts/setup.sh): {exc}")
    yield server.url
    server.kill()


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=None)
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"a running dockerd is needed (run scripts/setup.sh): {exc}")
    yield client
    client.close()


@pytest.fixture
def fake_redis():
    import fakeredis

    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


@pytest.fixture
def fake_producer(fake_redis, monkeypatch):
    """Every Producer the ``dockrq`` CLI builds talks to ``fake_redis``, with prefix ``p``."""
    from producer import Producer
    from producer import cli as cli_module

    def make(url, *, queue, prefix, retention_seconds):
        return Producer(connection=fake_redis, queue=queue, prefix="p", retention_seconds=retention_seconds)

    monkeypatch.setattr(cli_module, "Producer", make)
    # No worker publishes events here: however slow the machine, no "waiting for a worker"
    # notice joins the stderr these tests compare (tests/unit/test_submit_progress.py has it).
    monkeypatch.setattr("producer.progress.WAITING_NOTICE_SECONDS", 3600.0)
    return fake_redis


class VirtualClock:
    """Stands in for a module's ``time``: ``sleep`` advances ``monotonic`` at once, by exactly
    what was asked, so a test asserts on waits and budgets exactly, however loaded the machine.

    Only ``monotonic`` and ``sleep`` exist: any other ``time.*`` the module calls fails loudly
    rather than mixing real and virtual time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        import threading

        self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        with self._lock:
            self._now += seconds

    def __getattr__(self, name: str):
        raise AttributeError(f"VirtualClock has no time.{name}; add it if the module under test needs it")


@pytest.fixture
def virtual_time(monkeypatch):
    """``virtual_time(module, ...)`` replaces those modules' ``time`` with one VirtualClock and returns it.

    redis-py's ``Retry`` (every dockrq retry, ``schemas.connections``) sleeps on that clock too.
    """
    clock = VirtualClock()

    def install(*modules) -> VirtualClock:
        import redis.retry

        for module in modules:
            monkeypatch.setattr(module, "time", clock)
        monkeypatch.setattr(redis.retry, "sleep", clock.sleep)
        return clock

    return install



# -- dockrq-worker processes (worker integration tests) ---------------------------


class WorkerProcess:
    """One ``dockrq-worker`` subprocess; its output goes to a file the test can read."""

    def __init__(self, popen, log_path, queue, prefix, executor_id):
        self.popen, self.log_path = popen, log_path
        self.queue, self.prefix, self.executor_id = queue, prefix, executor_id

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; a worker still running after ``timeout`` fails the test with its output."""
        import subprocess

        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dockrq-worker still running after {timeout:g} s; its output:\n{self.output()[-20000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (rq's scheduler, a pool's workers)."""
        import signal

        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)


@pytest.fixture
def spawn_worker(redis_url, unique, docker_client, tmp_path):
    """Start ``dockrq-worker`` subprocesses on this test's own queue, prefix and executor id.

    ``spawn(*extra_args, ready=True)`` returns a WorkerProcess once rq lists it
    on the queue; ``spawn.many(n, *extra_args, **kw)`` starts n at once and returns them once rq
    lists them all; ``spawn.ready(count, procs)`` waits for ``count`` workers when ``procs`` were
    spawned with ``ready=False``; ``spawn.runner(execution_id, procs)`` is the one running it. At teardown every process group is SIGKILLed and every
    container labelled with the test's executor id is removed, whatever the test did.
    """
    import subprocess
    import sys
    import time
    from pathlib import Path

    import redis
    from rq import Queue, Worker

    queue, prefix, executor_id = f"q-{unique}", f"p-{unique}", f"test-{unique}"
    entry = Path(sys.executable).with_name("dockrq-worker")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "worker.service.cli"]
    client = redis.Redis.from_url(redis_url)
    spawn_redis_url = redis_url
    started: list[WorkerProcess] = []

    executor_ids = {executor_id}

    def listening(connection=client) -> int:
        return len(Worker.all(queue=Queue(queue, connection=connection)))

    def spawn(
        *extra: str, ready: bool = True, stop_grace: float = 1.0, env: dict | None = None,
        executor_id: str = executor_id, redis_url: str = redis_url,
    ) -> WorkerProcess:
        """``executor_id``/``env={"DOCKER_HOST": ...}``: a worker of another node (tests/integration
        docker_node); ``redis_url``: another Redis (a Sentinel URL). Their containers are the node's to remove."""
        log_path = tmp_path / f"worker-{len(started)}.log"
        args = [
            *base, "--redis-url", redis_url, "-q", queue, "--prefix", prefix,
            "--executor-id", executor_id, "--stop-grace", str(stop_grace), *extra,
        ]
        from schemas.connections import client_from_url

        connection = client if redis_url == spawn_redis_url else client_from_url(redis_url)
        executor_ids.add(executor_id)
        before = listening(connection)
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        proc = WorkerProcess(popen, log_path, queue, prefix, executor_id)
        started.append(proc)
        deadline = time.monotonic() + 20
        try:
            while ready and listening(connection) <= before:
                if popen.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dockrq-worker did not start:\n{proc.output()}")
                time.sleep(0.05)
        finally:
            if connection is not client:
                connection.close()
        return proc

    def ready(count: int, procs: list[WorkerProcess], *, redis_url: str = redis_url, timeout: float = 30) -> None:
        """Wait until rq lists ``count`` workers on the queue, ``procs`` being the ones spawned with
        ``ready=False`` (so that their starts overlap); fails with the logs of those of ``procs``
        that died or, after ``timeout`` seconds, of all of them."""
        from schemas.connections import client_from_url

        connection = client if redis_url == spawn_redis_url else client_from_url(redis_url)
        try:
            deadline = time.monotonic() + timeout
            while listening(connection) < count:
                dead = [p for p in procs if p.popen.poll() is not None]
                if dead or time.monotonic() > deadline:
                    pytest.fail("dockrq-worker did not start:\n" + "\n".join(p.output() for p in dead or procs))
                time.sleep(0.05)
        finally:
            if connection is not client:
                connection.close()

    def many(count: int, *extra: str, redis_url: str = redis_url, **kw) -> list[WorkerProcess]:
        """``count`` workers started at once (their imports overlap instead of queueing one after
        the other); returns them once rq lists all of them on the queue."""
        from schemas.connections import client_from_url

        connection = client if redis_url == spawn_redis_url else client_from_url(redis_url)
        try:
            before = listening(connection)
        finally:
            if connection is not client:
                connection.close()
        procs = [spawn(*extra, ready=False, redis_url=redis_url, **kw) for _ in range(count)]
        ready(before + count, procs, redis_url=redis_url)
        return procs

    def runner(execution_id: str, procs: list[WorkerProcess]) -> WorkerProcess:
        """The one of ``procs`` that rq's job meta names as running ``execution_id`` now
        (``meta["worker"]``: a worker name, ``EXECUTOR.PID.SUFFIX``)."""
        from rq.job import Job
        from rq.serializers import JSONSerializer

        name = Job.fetch(execution_id, connection=client, serializer=JSONSerializer).get_meta(refresh=True)["worker"]
        (proc,) = [p for p in procs if f".{p.pid}." in name]
        return proc

    spawn.queue, spawn.prefix, spawn.executor_id = queue, prefix, executor_id
    spawn.many, spawn.ready, spawn.runner = many, ready, runner
    yield spawn

    for proc in started:
        proc.kill()
    client.close()
    for executor in executor_ids:  # on the default daemon; a docker_node removes its own
        for container in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={executor}"}):
            container.remove(force=True)


@pytest.fixture
def producer(redis_url, spawn_worker):
    """A Producer on the queue and prefix of this test's ``spawn_worker`` workers."""
    from producer import Producer

    with Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as p:
        yield p


# -- rq-dashboard in process (its Flask test client), as scripts/dashboard.sh configures it ----


@pytest.fixture
def dashboard_json():
    """``open(redis_url)`` -> ``get(path)`` returning the JSON of an rq-dashboard endpoint.

    The app is built like ``rq-dashboard --json --config worker.dashboard``; the
    serializer setting is global to rq_dashboard and restored at teardown.
    """
    pytest.importorskip("rq_dashboard")
    from rq.serializers import JSONSerializer
    from rq_dashboard import web
    from rq_dashboard.cli import make_flask_app

    saved = web.config.serializer

    def open_dashboard(url: str):
        app = make_flask_app("worker.dashboard", None, None, "")
        app.config["RQ_DASHBOARD_REDIS_URL"] = url
        web.config.serializer = JSONSerializer
        web.setup_rq_connection(app)
        client = app.test_client()

        def get(path: str):
            response = client.get(f"/0{path}")
            assert response.status_code == 200, (path, response.status_code, response.data[:2000])
            return response.get_json()

        return get

    yield open_dashboard
    web.config.serializer = saved
