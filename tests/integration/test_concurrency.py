"""Concurrency limits on real workers and Redis (rq's RateLimit): at most N running per key, fleet-wide,
in order; cancels of waiting and slot-holding executions; a worker killed mid-run frees its slot when reaped."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta

import pytest
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry
from rq.serializers import JSONSerializer

from producer import AsyncProducer
from scripts.faults import FAST_REAP_ENV
from schemas import ExecutionStatus
from polling import wait_until

pytestmark = pytest.mark.integration

FINAL = {s.value for s in ExecutionStatus}


def _req(image, eid, key, limit, *cmd, **fields):
    return {
        "execution_id": eid,
        "engine": {"image": image, "cmd": list(cmd or ("true",))},
        "concurrency_key": key,
        "concurrency_limit": limit,
        **fields,
    }


class Running:
    """Follows P:events from before anything is submitted: which executions run, in what order, how many at once."""

    def __init__(self, redis_client, channel, ignore=()):
        self._ignore = set(ignore)
        self.running: set[str] = set()
        self.started: list[str] = []
        self.most = 0
        self._pubsub = redis_client.pubsub()
        self._pubsub.subscribe(channel)
        wait_until(lambda: (m := self._pubsub.get_message(timeout=0.1)) is not None and m["type"] == "subscribe", 5, "sub")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            m = self._pubsub.get_message(timeout=0.1)
            if not m or m["type"] != "message":
                continue
            event = json.loads(m["data"])
            eid, status = event["execution_id"], event["status"]
            if eid in self._ignore:
                continue
            if status == "running":
                self.running.add(eid)
                self.started.append(eid)
                self.most = max(self.most, len(self.running))
            elif status in FINAL:
                self.running.discard(eid)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()


def test_at_most_n_run_at_once_fleet_wide_in_order(producer, spawn_worker, test_image, unique, redis_client, redis_url):
    spawn_worker.many(3)
    key = f"tenant-{unique}"
    watch = Running(redis_client, producer.keys.events, ignore={f"free-{unique}"})
    ids = [producer.submit(_req(test_image, f"one-{i}-{unique}", key, 2, "sleep", "1")) for i in range(2)]
    ids += producer.submit_many([_req(test_image, f"many-{i}-{unique}", key, 2, "sleep", "1") for i in range(2)])

    async def via_async():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            return await ap.submit(_req(test_image, f"async-{unique}", key, 2, "sleep", "1"))

    ids.append(asyncio.run(via_async()))
    later = producer.submit(_req(test_image, f"later-{unique}", key, 2, "sleep", "1"), delay=timedelta(seconds=1))
    free = producer.submit({"execution_id": f"free-{unique}", "engine": {"image": test_image, "cmd": ["true"]}})
    outcomes = producer.wait_many([*ids, later, free], timeout=180)
    watch.close()
    assert {o.status for o in outcomes.values()} == {ExecutionStatus.SUCCEEDED}
    assert watch.most == 2  # never more than two of the key at once (the one without a key is not counted)
    limited = watch.started
    assert sorted(limited) == sorted([*ids, later])
    assert set(limited[:2]) == set(ids[:2])  # the oldest first
    spans = sorted((outcomes[e].result.started_at, outcomes[e].result.finished_at) for e in limited)
    for i, (start, _) in enumerate(spans):  # never a third one of the key running
        assert sum(1 for s, f in spans[:i] if f > start) <= 1
    registry = RateLimitRegistry(key, redis_client)
    wait_until(lambda: registry.get_allowed_job_count() == 0, 10, "slots freed")


def test_cancel_frees_and_skips_waiting_slots(producer, spawn_worker, test_image, unique, redis_client, redis_url):
    key = f"licence-{unique}"
    registry = RateLimitRegistry(key, redis_client)
    # No worker yet: the first holds the one slot (queued), the others wait rate_limited.
    holder = producer.submit(_req(test_image, f"holder-{unique}", key, 1, "sleep", "300"))
    waiting = producer.submit(_req(test_image, f"waiting-{unique}", key, 1))
    third = producer.submit(_req(test_image, f"third-{unique}", key, 1, "sleep", "300"))
    last = producer.submit(_req(test_image, f"last-{unique}", key, 1))
    status = lambda eid: Job.fetch(eid, connection=redis_client, serializer=JSONSerializer).get_status()  # noqa: E731
    assert (status(holder), status(waiting)) == (JobStatus.QUEUED, JobStatus.RATE_LIMITED)

    async def cancel_async(eid):
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            return await ap.cancel(eid)

    assert asyncio.run(cancel_async(waiting)) == "cancelled"  # waiting for a slot: never runs
    assert producer.cancel(holder) == "cancelled"  # holding one while queued: the slot goes to the next
    assert registry.get_allowed_job_ids() == [third] and status(third) == JobStatus.QUEUED
    assert registry.get_rate_limited_job_ids() == [last]
    spawn_worker(env=FAST_REAP_ENV)
    wait_until(lambda: producer.status(third).state.value == "running", 60, "third running")
    assert producer.cancel(third) == "signalled"  # running: stopped, and its slot freed when it ends
    outcomes = producer.wait_many([holder, waiting, third, last], timeout=60)
    assert [o.status for o in outcomes.values()] == [ExecutionStatus.CANCELLED] * 3 + [ExecutionStatus.SUCCEEDED]
    wait_until(lambda: registry.get_allowed_job_count() == 0, 10, "slots freed")


def test_a_killed_workers_slot_is_freed_when_its_execution_is_reaped(
    producer, spawn_worker, test_image, unique, redis_client, docker_client
):
    key = f"gpu-{unique}"
    doomed = spawn_worker(env=FAST_REAP_ENV)
    watch = Running(redis_client, producer.keys.events)
    first = producer.submit(_req(test_image, f"first-{unique}", key, 1, "sleep", "300"))
    wait_until(lambda: producer.status(first).state.value == "running", 60, "first running")
    rest = [producer.submit(_req(test_image, f"rest-{i}-{unique}", key, 1, "sleep", "1")) for i in range(2)]
    spawn_worker("--executor-id", f"{spawn_worker.executor_id}-b", env=FAST_REAP_ENV)  # idle: the key is full
    time.sleep(1)
    assert [producer.status(e).state.value for e in rest] == ["queued", "queued"] and watch.started == [first]
    doomed.kill()
    outcomes = producer.wait_many([first, *rest], timeout=120)
    watch.close()
    assert (outcomes[first].status, outcomes[first].error.code) == (ExecutionStatus.LOST, "worker_lost")
    assert [outcomes[e].status for e in rest] == [ExecutionStatus.SUCCEEDED] * 2
    assert watch.started == [first, *rest] and watch.most == 1
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={first}"})
    wait_until(lambda: RateLimitRegistry(key, redis_client).get_allowed_job_count() == 0, 10, "slots freed")


def test_retries_keep_their_slot_and_a_killed_retry_is_reaped(producer, spawn_worker, test_image, unique, redis_client):
    """Concurrency and retries together: an immediate retry keeps the slot; a lost attempt is retried."""
    key = f"mix-{unique}"
    doomed = spawn_worker(env=FAST_REAP_ENV)
    eid = producer.submit(_req(test_image, f"mix-{unique}", key, 1, "sleep", "300", retries=1))
    other = producer.submit(_req(test_image, f"other-{unique}", key, 1))
    wait_until(lambda: producer.status(eid).state.value == "running", 60, "running")
    doomed.kill()
    spawn_worker("--executor-id", f"{spawn_worker.executor_id}-b", env=FAST_REAP_ENV)
    wait_until(lambda: Job.fetch(eid, connection=redis_client, serializer=JSONSerializer).meta.get("attempts") == 2
          and producer.status(eid).state.value == "running", 60, "second attempt running")
    assert producer.status(other).state.value == "queued"  # the retry kept the slot
    producer.cancel(eid)
    outcomes = producer.wait_many([eid, other], timeout=60)
    assert (outcomes[eid].status, outcomes[eid].attempts) == (ExecutionStatus.CANCELLED, 2)
    assert outcomes[eid].previous_attempts[0].status == ExecutionStatus.LOST
    assert outcomes[other].status == ExecutionStatus.SUCCEEDED
