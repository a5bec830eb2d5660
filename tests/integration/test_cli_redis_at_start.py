"""``dockrq wait``, ``logs -f`` and ``status`` started just as Redis goes away ride it out.

A redis-server of the test's own (append-only: a restart keeps the data) runs a worker and
one execution. Right after the three commands start, before their first read, Redis is
SIGKILLed; it is started again a second after each has found it away (its first read failed:
its one "Redis unreachable; retrying" line). Before producer.reaching, their first reads gave
up after the client's own retry round ("cannot reach Redis", wait exit 125, logs and status 1);
now each ends normally with the execution's outcome.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polling import wait_until
from producer import Producer
from scripts.faults import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


class Command:
    """One ``dockrq`` process; its stderr read line by line as it comes."""

    def __init__(self, redis_url: str, worker, *args: str) -> None:
        entry = Path(sys.executable).with_name("dockrq")
        base = [str(entry)] if entry.exists() else [sys.executable, "-m", "producer.cli"]
        self.popen = subprocess.Popen(
            [*base, "--redis-url", redis_url, "--queue", worker.queue, "--prefix", worker.prefix, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=lambda: self.stderr.extend(self.popen.stderr), daemon=True)
        self._reader.start()

    def found_redis_away(self) -> bool:
        """It said Redis is away (and rides it out), or it has already ended."""
        return self.popen.poll() is not None or any("Redis unreachable" in line for line in self.stderr)

    def result(self, timeout: float) -> tuple[int, str, str]:
        try:
            stdout = self.popen.stdout.read() if self.popen.wait(timeout) is not None else ""
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(10)
        return self.popen.returncode, stdout, "".join(self.stderr)


def test_wait_logs_status_ride_out_redis_going_away_before_their_first_read(own_redis, spawn_worker, unique, test_image):
    spawn_worker(redis_url=own_redis.url)
    with Producer(own_redis.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer:
        eid = producer.submit({
            "execution_id": f"start-{unique}",
            "engine": {"image": test_image, "cmd": ["sh", "-c", "echo hello; sleep 2; echo bye"]},
        })
        wait_until(lambda: producer.status(eid).state == "running", 60, "the execution running")

    commands = [Command(own_redis.url, spawn_worker, *args) for args in (["wait", eid], ["logs", "-f", eid], ["status", eid])]
    try:
        own_redis.kill()  # they are still importing: no read has been made yet
        wait_until(lambda: all(c.found_redis_away() for c in commands), 60, "every command finding Redis away")
        time.sleep(1)
        own_redis.start()
        (waited, followed, status) = (c.result(90) for c in commands)
    finally:
        for command in commands:
            if command.popen.poll() is None:
                command.popen.kill()
                command.popen.wait(10)

    assert waited[:2] == (0, "succeeded (exit 0)\n"), waited
    assert followed[:2] == (0, "hello\nbye\n"), followed
    assert status[0] == 0 and eid in status[1] and "state" in status[1], status
    for code, _, stderr in (waited, followed, status):
        assert "cannot reach Redis" not in stderr and "Traceback" not in stderr
        assert stderr.count("Redis unreachable") == 1, stderr  # said once, when it was found away
