"""Producer.as_completed / wait_many on real Redis and a real worker: 2,000 executions on a
fixed number of connections, lost pub/sub messages, a Redis restart in the middle."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from producer import Producer, WaitTimeout
from schemas import WRITE_OUTCOME_LUA, ExecutionResult, ExecutionStatus, Keys, Outcome

pytestmark = pytest.mark.integration


def _req(image, eid, *cmd):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd or ("true",))}}


def _end_silently(client, prefix, eid):
    """An outcome whose final event never reached a subscriber (lost message)."""
    outcome = Outcome.from_result(ExecutionResult(execution_id=eid, status=ExecutionStatus.SUCCEEDED, exit_code=0))
    client.eval(WRITE_OUTCOME_LUA, 1, Keys(prefix).outcome(eid), outcome.model_dump_json(), 600)


def _connections(client, name):
    return [c for c in client.client_list() if c.get("name") == name]


def test_2000_executions_on_a_fixed_number_of_connections(redis_url, spawn_worker, redis_client, test_image, unique):
    spawn_worker()
    name = f"many-{unique}"
    follower = Producer(connection=redis.Redis.from_url(redis_url, client_name=name),
                        queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    other = Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    idle_queue = f"idle-{unique}"  # no worker reads it: these end by cancel or a bare outcome
    run = [other.submit(_req(test_image, f"run{i}-{unique}", "sh", "-c", f"exit {i}")) for i in range(3)]
    parked = other.submit_many([_req(test_image, f"park{i}-{unique}") for i in range(1997)], queue=idle_queue)
    silent, cancelled = parked[:20], parked[20:]
    ids = run + parked

    def end_them():
        for eid in silent:
            _end_silently(redis_client, spawn_worker.prefix, eid)
        for eid in cancelled:
            other.cancel(eid)

    ender = threading.Thread(target=end_them)
    seen: list[str] = []
    most = 0
    try:
        for outcome in follower.as_completed(ids, timeout=300, recheck_seconds=1):
            if not seen:
                ender.start()
            seen.append(outcome.execution_id)
            if len(seen) % 100 == 1:
                most = max(most, len(_connections(redis_client, name)))
        ender.join()
        most = max(most, len(_connections(redis_client, name)))
    finally:
        follower.close()
        other.close()
    assert sorted(seen) == sorted(ids)  # every one, each once
    assert 1 <= most <= 3, most  # one reading, one subscribed (whatever the number of ids)
    outcomes = {eid: Producer(redis_url, prefix=spawn_worker.prefix).status(eid).outcome for eid in run}
    assert [outcomes[eid].exit_code for eid in run] == [0, 1, 2]


def test_wait_many_rides_out_a_redis_restart(tmp_path, unique, test_image):
    from scripts.faults import RedisServer

    server = RedisServer(tmp_path, durable=True)
    server.start()
    try:
        with Producer(server.url, queue=f"q-{unique}", prefix=f"p-{unique}") as p:
            ids = p.submit_many([_req(test_image, f"rs{i}-{unique}") for i in range(4)])
            p.cancel(ids[0])
            got: dict = {}
            errors: list[BaseException] = []

            def wait():
                try:
                    got.update(p.wait_many(ids, timeout=120, recheck_seconds=1))
                except BaseException as exc:  # noqa: BLE001 - reported by the assert below
                    errors.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            time.sleep(0.5)
            server.kill()
            time.sleep(1.0)
            server.start()
            client = redis.Redis.from_url(server.url)
            # Ended while the waiter reconnects: one with its event (maybe missed), two without.
            p.cancel(ids[1])
            _end_silently(client, f"p-{unique}", ids[2])
            _end_silently(client, f"p-{unique}", ids[3])
            client.close()
            waiter.join(60)
            assert not waiter.is_alive() and not errors, errors
            assert list(got) == ids
            assert [o.status for o in got.values()] == [ExecutionStatus.CANCELLED] * 2 + [ExecutionStatus.SUCCEEDED] * 2
    finally:
        server.kill()


def test_timeout_names_the_executions_still_running(producer, spawn_worker, test_image, unique):
    spawn_worker()
    quick = producer.submit(_req(test_image, f"quick-{unique}", "true"))
    slow = producer.submit(_req(test_image, f"slow-{unique}", "sleep", "300"))
    producer.wait(quick, timeout=60)  # ended before the timed wait begins: no race with a slow machine
    with pytest.raises(WaitTimeout) as info:
        producer.wait_many([quick, slow], timeout=2)
    assert info.value.pending == [slow] and list(info.value.outcomes) == [quick]
    producer.cancel(slow)
    assert producer.wait_many([slow], timeout=30)[slow].status == ExecutionStatus.CANCELLED
