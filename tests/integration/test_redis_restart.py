"""Faults survived: Redis restarted mid-execution.

A throwaway redis-server of the test's own (free port, append-only file in
the test's directory, like the compose file's Redis) is SIGKILLed while an
execution runs and started again on the same port. The container ends while
Redis is down; its outcome is written once Redis is back, the waiter and the
log follower that were blocked on Redis reconnect and get everything, and the
workers (busy and idle) carry on serving. Kept away longer than the worker's
DOCKRQ_OUTCOME_RETRY_SECONDS, the job stops waiting, and the worker (which kept the
outcome) writes it once Redis is back, then serves again.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer import Producer
from schemas import ExecutionStatus
from scripts.faults import RedisServer
from polling import wait_until

pytestmark = pytest.mark.integration

# The beyond-the-budget test's DOCKRQ_OUTCOME_RETRY_SECONDS, and about how long one command's own
# retry round lasts (schemas.connections.command_retry: redis-py's 10 tries, jittered backoff to 1 s).
BUDGET = 2
COMMAND_RETRY_ROUND = 4

FAST = {
    "DOCKRQ_HEARTBEAT_SECONDS": "0.5",
    "DOCKRQ_REAP_AFTER_SECONDS": "2",
    "DOCKRQ_REAP_INTERVAL_SECONDS": "0.5",
}


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def test_redis_restart_mid_execution(own_redis, spawn_worker, unique, test_image):
    client = redis.Redis.from_url(own_redis.url)
    queue = Queue(spawn_worker.queue, connection=client)
    busy = spawn_worker("--redis-url", own_redis.url, ready=False, env=FAST)
    idle = spawn_worker("--redis-url", own_redis.url, ready=False, env=FAST)
    third = spawn_worker("--redis-url", own_redis.url, ready=False, env=FAST)  # idle through the outage
    wait_until(lambda: len(Worker.all(queue=queue)) == 3, 20, "three workers listening")
    producer = Producer(own_redis.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    eid = producer.submit({
        "execution_id": f"through-{unique}",
        "engine": {"image": test_image, "cmd": ["sh", "-c", "echo before; sleep 3; echo after >&2"]},
    })
    quiet = producer.submit({  # ends without output: its outcome write itself waits for Redis
        "execution_id": f"quiet-{unique}", "engine": {"image": test_image, "cmd": ["sh", "-c", "sleep 3; exit 3"]},
    })
    waited: list = []
    followed: list = []
    waiter = threading.Thread(target=lambda: waited.append(producer.wait(eid, timeout=120)), daemon=True)
    follower = threading.Thread(
        target=lambda: followed.extend((e.stream, e.data) for e in producer.logs(eid, follow=True)), daemon=True
    )
    waiter.start()
    follower.start()
    wait_until(lambda: ("stdout", "before\n") in followed, 30, "the first log line")
    wait_until(lambda: producer.status(quiet).state == "running", 30, "the second execution running")

    own_redis.kill()  # mid-execution; the container ends while Redis is away (after 3 s)
    time.sleep(10)
    assert waited == []
    back_at = time.time()
    own_redis.start()

    waiter.join(60)
    follower.join(30)
    assert not waiter.is_alive() and not follower.is_alive()
    (got,) = waited
    assert (got.status, got.result.stdout, got.result.stderr) == (ExecutionStatus.SUCCEEDED, "before\n", "after\n")
    assert followed == [("stdout", "before\n"), ("stderr", "after\n")]
    job = Job.fetch(eid, connection=client, serializer=JSONSerializer)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "rq job finished")
    # The execution ended while Redis was away; what it produced was kept and written on its return.
    assert got.result.finished_at.timestamp() < back_at
    assert "not shipped yet" in busy.output() + idle.output() + third.output()
    late = producer.wait(quiet, timeout=30)
    assert (late.status, late.exit_code) == (ExecutionStatus.FAILED, 3)
    assert late.result.finished_at.timestamp() < back_at
    quiet_job = Job.fetch(quiet, connection=client, serializer=JSONSerializer)
    wait_until(lambda: quiet_job.get_status(refresh=True) == JobStatus.FINISHED, 20, "rq job finished")  # follows the outcome

    # Every worker is still there, and they serve again.
    assert [w.popen.poll() for w in (busy, idle, third)] == [None, None, None]
    ids = [
        producer.submit({"execution_id": f"after-{i}-{unique}", "engine": {"image": test_image, "cmd": ["echo", str(i)]}})
        for i in range(4)
    ]
    assert [producer.wait(i, timeout=60).status for i in ids] == [ExecutionStatus.SUCCEEDED] * 4
    ran_on = {Job.fetch(i, connection=client, serializer=JSONSerializer).get_meta()["worker"] for i in ids}
    assert len(ran_on) >= 1
    producer.close()
    client.close()


def test_redis_away_beyond_the_outcome_retry_budget(own_redis, spawn_worker, unique, test_image, docker_client):
    """The execution ends while Redis is down, and Redis stays down longer than the worker's
    DOCKRQ_OUTCOME_RETRY_SECONDS: the job stops waiting, the worker waits for Redis and
    then writes the container's own outcome (once), and serves again."""
    client = redis.Redis.from_url(own_redis.url)
    queue = Queue(spawn_worker.queue, connection=client)
    worker = spawn_worker("--redis-url", own_redis.url, ready=False, env={**FAST, "DOCKRQ_OUTCOME_RETRY_SECONDS": str(BUDGET)})
    wait_until(lambda: len(Worker.all(queue=queue)) == 1, 20, "the worker listening")
    producer = Producer(own_redis.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    eid = producer.submit({
        "execution_id": f"beyond-{unique}",
        "engine": {"image": test_image, "cmd": ["sh", "-c", "echo before; sleep 2; echo after; exit 4"]},
    })
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(producer.wait(eid, timeout=60)), daemon=True)
    waiter.start()
    wait_until(lambda: producer.status(eid).state == "running", 30, "the execution running")

    own_redis.kill()  # the container ends 2 s later, with Redis away for good (as far as the budget goes)
    wait_until(lambda: "settling it once Redis is back" in worker.output(), 30, "the worker giving up on the outcome")
    gave_up_at = time.time()
    label = f"dockrq.execution={eid}"
    wait_until(lambda: not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": label}), 10, "the container removed")
    assert waited == [] and worker.popen.poll() is None
    own_redis.start()

    waiter.join(30)
    assert not waiter.is_alive()
    (got,) = waited
    assert (got.status, got.exit_code) == (ExecutionStatus.FAILED, 4)
    assert got.result.stdout == "before\nafter\n"
    # The budget holds: the job gave up within the budget (2 s, from the first failed write, no
    # earlier than the container's end) plus at most one command's own redis-py retry round
    # (about 4 s: the heartbeat the main thread was in when the container ended), with room for
    # a loaded machine. Before, each step of the end (log batch, eof, outcome) paid a whole
    # command retry round of its own on top of the budget: about 18 s after the container's end.
    assert gave_up_at - got.result.finished_at.timestamp() < BUDGET + COMMAND_RETRY_ROUND + 4
    assert client.llen(f"{spawn_worker.prefix}:exec:{eid}:outcome") == 1
    assert producer.wait(eid, timeout=5) == got  # every later waiter gets the same one
    assert "outcome written after the outage" in worker.output()
    job = Job.fetch(eid, connection=client, serializer=JSONSerializer)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "rq job settled")

    # The worker is still there, and serves again.
    assert worker.popen.poll() is None
    after = producer.submit({"execution_id": f"after-{unique}", "engine": {"image": test_image, "cmd": ["echo", "ok"]}})
    assert producer.wait(after, timeout=30).status == ExecutionStatus.SUCCEEDED
    producer.close()
    client.close()


def test_a_delayed_execution_runs_after_a_redis_restart(own_redis, spawn_worker, unique, test_image):
    """rq's scheduler process (every worker forks one) rides out an outage longer than the
    clients' own retries: an execution submitted with a delay once Redis is back runs when it
    is due. Before, the scheduler died at the first ConnectionError (a traceback on stderr) and
    rq starts a new one only at its 10-minute maintenance."""
    worker = spawn_worker(redis_url=own_redis.url, env=FAST)
    wait_until(lambda: "Scheduler for" in worker.output(), 20, "the scheduler started")
    own_redis.kill()
    time.sleep(7)  # past the ~4 s a command retries on its own: the scheduler's loop sees the error
    own_redis.start()
    producer = Producer(own_redis.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    eid = producer.submit(
        {"execution_id": f"later-{unique}", "engine": {"image": test_image, "cmd": ["echo", "due"]}},
        delay=timedelta(seconds=1),
    )
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "due\n")
    assert "raised an exception" not in worker.output() and "Traceback" not in worker.output()
    assert worker.popen.poll() is None
    producer.close()
