"""``dockrq wait``, ``logs -f`` and ``status`` started while Redis is away, which then comes back
without its data (a redis-server of the test's own without persistence), say the execution may
have been lost with Redis's data, not "no such execution": it was accepted, and its worker still
runs it. Before, each said ``dockrq: no such execution: ID``."""

from __future__ import annotations

import time

import pytest

from polling import wait_until
from producer import Producer
from scripts.faults import RedisServer
from test_cli_redis_at_start import Command

pytestmark = pytest.mark.integration

LOST = "no such execution now, but Redis was unreachable when this call started and may have lost its data"


@pytest.fixture
def forgetful_redis(tmp_path):
    server = RedisServer(tmp_path, durable=False)  # a restart comes back empty
    server.start()
    yield server
    server.kill()


def test_an_execution_redis_lost_while_the_commands_started_is_said_maybe_lost(forgetful_redis, spawn_worker, unique, test_image):
    spawn_worker(redis_url=forgetful_redis.url)
    with Producer(forgetful_redis.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer:
        eid = producer.submit({"execution_id": f"lost-{unique}", "engine": {"image": test_image, "cmd": ["sleep", "20"]}})
        wait_until(lambda: producer.status(eid).state == "running", 60, "the execution running")

    commands = [Command(forgetful_redis.url, spawn_worker, *args) for args in (["wait", eid], ["logs", "-f", eid], ["status", eid])]
    try:
        forgetful_redis.kill()
        wait_until(lambda: all(c.found_redis_away() for c in commands), 60, "every command finding Redis away")
        time.sleep(1)
        forgetful_redis.start()
        (waited, followed, status) = (c.result(60) for c in commands)
    finally:
        for command in commands:
            if command.popen.poll() is None:
                command.popen.kill()
                command.popen.wait(10)

    assert (waited[0], followed[0], status[0]) == (125, 1, 1), (waited, followed, status)
    for _, _, stderr in (waited, followed, status):
        lines = [line for line in stderr.splitlines() if "Redis unreachable" not in line]
        assert len(lines) == 1 and lines[0].startswith(f"dockrq: {LOST}") and lines[0].endswith(f": {eid}"), stderr
        assert "no such execution: " not in stderr and "Traceback" not in stderr
