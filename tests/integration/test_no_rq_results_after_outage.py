"""No rq results stream ``rq:results:ID`` for finished executions, before and after a Redis restart.

A new-user trial found ``dockrq-worker run --pool 2`` members writing rq's results
stream for every execution once Redis had been restarted (``redis-cli shutdown``,
~10 s away, data kept or lost): rq's WorkerPool built each member with rq's own
``Job`` class (``rq.worker_pool.run_worker`` passes ``job_class=Job``), so rq's
``Job._handle_success`` and its ``Result.create`` ran, outage or not. A pool on its
own redis-server runs executions, Redis is shut down and started again, more run:
no ``rq:results:*`` key, each outcome written once, each rq job ``finished``.
"""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from polling import wait_until
from producer import Producer
from schemas import ExecutionStatus
from scripts.faults import RedisServer

pytestmark = pytest.mark.integration

FAST = {"DOCKRQ_HEARTBEAT_SECONDS": "0.5", "DOCKRQ_REAP_AFTER_SECONDS": "2", "DOCKRQ_REAP_INTERVAL_SECONDS": "0.5"}


@pytest.mark.parametrize("durable", [True, False], ids=["data-kept", "data-lost"])
def test_pool_writes_no_rq_results_across_a_redis_restart(tmp_path, spawn_worker, unique, test_image, durable):
    server = RedisServer(tmp_path, durable=durable)
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        spawn_worker("--redis-url", server.url, "--pool", "2", ready=False, env=FAST)
        producer = Producer(server.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
        outcome_key = f"{spawn_worker.prefix}:exec:{{}}:outcome"

        def run(tag: str, count: int) -> list[str]:
            ids = [
                producer.submit({"execution_id": f"{tag}-{i}-{unique}", "engine": {"image": test_image, "cmd": ["echo", str(i)]}})
                for i in range(count)
            ]
            assert [producer.wait(i, timeout=60).status for i in ids] == [ExecutionStatus.SUCCEEDED] * count
            for i in ids:
                job = Job.fetch(i, connection=client, serializer=JSONSerializer)
                wait_until(lambda job=job: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "rq job finished")
            return ids

        before = run("before", 2)
        assert client.keys("rq:results:*") == []
        # Same cause: a member ran any importable function; now it refuses it (rejected, rq job failed).
        other = Queue(spawn_worker.queue, connection=client, serializer=JSONSerializer).enqueue_call("os.getpid")
        wait_until(lambda: other.get_status(refresh=True) == JobStatus.FAILED, 30, "the foreign job refused")

        client.shutdown()  # as `redis-cli shutdown`: the append-only file kept (durable) or no data kept
        server.proc.wait(10)
        time.sleep(3)
        server.start()

        after = run("after", 4)
        # rq's failure result (its exception text) stays for a failed rq job, here the refused one.
        assert set(client.keys("rq:results:*")) <= {f"rq:results:{other.id}".encode()}
        for i in after + (before if durable else []):
            assert client.llen(outcome_key.format(i)) == 1, i
        producer.close()
        client.close()
    finally:
        server.kill()
