"""The request size bound with real Redis and a real dockrq-worker: the producer refuses
before writing, a job written past it (rq itself, as any non-dockrq producer may) is
rejected by the worker without a container, and what the producer accepts the worker runs."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from producer import Producer, RequestTooLarge, parse_request
from schemas import JOB_FRAMING_BYTES, JOB_FUNCTION, Event, ExecutionStatus, request_size

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024


def _size(request: dict) -> int:
    return request_size(parse_request(request).model_dump(mode="json"))


def _request(test_image: str, name: str, env_value: str = "") -> dict:
    eid = f"{name}-{uuid.uuid4().hex[:8]}"  # rq job ids share one keyspace whatever the prefix
    return {"execution_id": eid, "engine": {"image": test_image, "cmd": ["echo", "ran"], "env": {"BIG": env_value}}}


def test_worker_rejects_a_job_over_its_limit_and_runs_the_largest_the_producer_allows(
    redis_url, spawn_worker, test_image
):
    spawn_worker(env={"DOCKRQ_MAX_REQUEST_BYTES": "64k"})
    client = redis.Redis.from_url(redis_url)
    events = client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"{spawn_worker.prefix}:events")
    producer = Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix, max_request_bytes=LIMIT)

    # Written with rq directly, past the producer's check: 100 KB of environment.
    big = _request(test_image, "big", "x" * 100_000)
    Queue(spawn_worker.queue, connection=client, serializer=JSONSerializer).enqueue_call(
        JOB_FUNCTION, args=(big,), job_id=big["execution_id"]
    )
    got = producer.wait(big["execution_id"], timeout=30)
    assert (got.status, got.error.code, got.result) == (ExecutionStatus.REJECTED, "invalid_request", None)
    assert got.error.message == (
        f"request: more than {LIMIT + JOB_FRAMING_BYTES} bytes of rq job data, "
        f"above this worker's limit {LIMIT} (DOCKRQ_MAX_REQUEST_BYTES)"
    )

    # The producer refuses the same request before writing anything.
    again = _request(test_image, "again", "x" * 100_000)
    with pytest.raises(RequestTooLarge):
        producer.submit(again)
    assert client.keys(f"*{again['execution_id']}*") == []

    # The largest request the producer takes, the worker runs.
    largest = _request(test_image, "largest")
    largest["engine"]["env"]["BIG"] = "x" * (LIMIT - _size(largest))
    assert _size(largest) == LIMIT
    producer.submit(largest)
    ran = producer.wait(largest["execution_id"], timeout=30)
    assert (ran.status, ran.result.stdout) == (ExecutionStatus.SUCCEEDED, "ran\n")

    seen, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 0.5:
        message = events.get_message(timeout=0.1)  # None for the subscribe confirmation too
        if message is not None:
            event = Event.model_validate_json(message["data"])
            seen.append((event.execution_id, event.status.value))
            quiet_since = time.monotonic()
    # The rejected one never got as far as pulling or running.
    assert [s for eid, s in seen if eid == big["execution_id"]] == ["rejected"]
    assert [s for eid, s in seen if eid == largest["execution_id"]][-1] == "succeeded"
    events.close()
    producer.close()
    client.close()
