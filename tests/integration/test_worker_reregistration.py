"""Running workers register themselves again after Redis lost its data.

rq registers a worker only at birth; after FLUSHALL or a restart of a Redis
without persistence a running dockrq worker (plain or a ``--pool`` member) was
missing from ``rq:workers`` (rq info, the dashboard's Workers page, dockrq's
listings) until it restarted. Now its heartbeat thread finds its registration
gone and writes it back (worker.service.registration), saying so once; a worker
that stopped is not brought back. The Redis is the test's own (it is flushed and
restarted), never the session's.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis
from rq import Queue, Worker

from polling import wait_until
from producer import Producer
from scripts.faults import RedisServer

pytestmark = pytest.mark.integration

FAST = {
    "DOCKRQ_HEARTBEAT_SECONDS": "0.5",
    "DOCKRQ_IDLE_HEARTBEAT_SECONDS": "0.5",
    "DOCKRQ_REAP_AFTER_SECONDS": "2",
}
WARNING = "registration was gone from Redis"


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path, durable=False)  # a restart loses everything
    server.start()
    yield server
    server.kill()


def _registered(client: redis.Redis, queue: str) -> dict[str, dict[str, str]]:
    """rq's view: the workers of rq:workers:QUEUE and of rq:workers, with their hashes."""
    by_queue = {k.decode() for k in client.smembers(f"rq:workers:{queue}")}
    everyone = {k.decode() for k in client.smembers("rq:workers")}
    return {
        key: {f.decode(): v.decode() for f, v in client.hgetall(key).items()}
        for key in by_queue & everyone
    }


def test_workers_register_again_after_flushall_and_a_restart_without_persistence(
    own_redis, spawn_worker, unique, test_image
):
    client = redis.Redis.from_url(own_redis.url)
    queue = spawn_worker.queue
    plain = spawn_worker("--redis-url", own_redis.url, ready=False, env=FAST)
    pool = spawn_worker("--redis-url", own_redis.url, "--pool", "2", ready=False, env=FAST)
    wait_until(lambda: len(Worker.all(queue=Queue(queue, connection=client))) == 3, 30, "three workers listening")
    born = _registered(client, queue)
    assert len(born) == 3
    time.sleep(0.3)  # past rq's own first heartbeats

    def restored(what: str) -> dict[str, dict[str, str]]:
        wait_until(lambda: len(_registered(client, queue)) == 3, 20, f"the three workers registered again after {what}")
        wait_until(lambda: all("birth" in h for h in _registered(client, queue).values()), 10, "their hashes whole")
        again = _registered(client, queue)
        assert set(again) == set(born)
        for key, fields in again.items():
            for field in ("birth", "queues", "pid", "hostname", "dockrq_executor", "dockrq_pid_ns"):
                assert fields.get(field) == born[key][field], (what, key, field, fields)
            assert fields["state"] in ("idle", "busy") and fields["last_heartbeat"]
            assert 0 < client.ttl(key) <= 480  # it expires as rq's hash does
        assert {w.name for w in Worker.all(connection=client)} == {k.split(":", 2)[2] for k in born}
        return again

    client.flushall()
    restored("FLUSHALL")
    own_redis.kill()
    own_redis.start()  # without persistence: empty
    client = redis.Redis.from_url(own_redis.url)
    restored("a Redis restart")

    # One warning per loss and worker, not one per heartbeat.
    time.sleep(1.5)
    assert plain.output().count(WARNING) == 2, plain.output()
    assert pool.output().count(WARNING) == 4, pool.output()

    # They still serve.
    with Producer(own_redis.url, queue=queue, prefix=spawn_worker.prefix) as producer:
        eid = producer.submit({"execution_id": f"after-{unique}", "engine": {"image": test_image, "cmd": ["true"]}})
        assert producer.wait(eid, timeout=60).status == "succeeded"

    # A worker that stops is unregistered by rq's register_death and stays so.
    plain_key = next(k for k, h in born.items() if h["pid"] == str(plain.pid))
    plain.signal(signal.SIGTERM)
    assert plain.wait(30) == 0
    time.sleep(1.5)  # several heartbeat intervals of the others
    left = _registered(client, queue)
    assert plain_key not in left and len(left) == 2
    assert not client.sismember("rq:workers", plain_key)
    client.close()
