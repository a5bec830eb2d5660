"""Dependencies on real workers and Redis: run after success, cancelled (dependency_failed) otherwise,
transitively; unknown ids refused; a cancelled dependency; a worker killed mid-run of a dependency."""

from __future__ import annotations

import time

import pytest
from rq.job import Job

from producer import AsyncProducer, InvalidRequest
from scripts.faults import FAST_REAP_ENV
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def _req(image, eid, *cmd):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd or ("true",))}}


def test_chain_runs_in_order_after_success(producer, spawn_worker, test_image, unique, redis_client):
    spawn_worker(env=FAST_REAP_ENV)
    spawn_worker(env=FAST_REAP_ENV)
    a = producer.submit(_req(test_image, f"a-{unique}", "sleep", "1"))
    b = producer.submit(_req(test_image, f"b-{unique}"), depends_on=[a])
    c = producer.submit(_req(test_image, f"c-{unique}"), depends_on=[a, b])
    assert Job.fetch(b, connection=redis_client).get_status().value in ("deferred", "queued", "started", "finished")
    outcomes = producer.wait_many([a, b, c], timeout=120)
    assert [o.status for o in outcomes.values()] == [ExecutionStatus.SUCCEEDED] * 3, {i: o.error for i, o in outcomes.items()}
    assert outcomes[b].result.started_at >= outcomes[a].result.finished_at
    assert outcomes[c].result.started_at >= outcomes[b].result.finished_at
    late = producer.submit(_req(test_image, f"late-{unique}"), depends_on=[a])  # its dependency ended already
    assert producer.wait(late, timeout=60).status == ExecutionStatus.SUCCEEDED


def test_failure_cancels_dependents_transitively(producer, spawn_worker, test_image, unique, redis_url):
    import asyncio

    spawn_worker(env=FAST_REAP_ENV)
    f = producer.submit(_req(test_image, f"f-{unique}", "sh", "-c", "exit 1"))
    g = producer.submit(_req(test_image, f"g-{unique}"), depends_on=[f])

    async def via_async():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            return await ap.submit(_req(test_image, f"h-{unique}"), depends_on=[g])

    h = asyncio.run(via_async())
    outcomes = producer.wait_many([f, g, h], timeout=120)
    assert outcomes[f].status == ExecutionStatus.FAILED
    for eid, dep, status in ((g, f, "failed"), (h, g, "cancelled")):
        o = outcomes[eid]
        assert (o.status, o.error.code, o.result) == (ExecutionStatus.CANCELLED, "dependency_failed", None)
        assert o.error.message == f"dependency {dep} ended {status}"


def test_unknown_dependency_is_refused_before_anything_is_written(producer, test_image, unique, redis_client):
    eid = f"orphan-{unique}"
    with pytest.raises(InvalidRequest, match=f"depends_on: no such execution: ghost-{unique}"):
        producer.submit(_req(test_image, eid), depends_on=[f"ghost-{unique}"])
    with pytest.raises(InvalidRequest, match="depends_on.0"):
        producer.submit(_req(test_image, eid), depends_on=["not:an:id"])
    assert not redis_client.exists(Job.key_for(eid), f"{producer.keys.claim(eid)}")


def test_cancelling_a_dependency_cancels_what_waits_on_it(producer, spawn_worker, test_image, unique):
    dep = producer.submit(_req(test_image, f"dep-{unique}"))
    child = producer.submit(_req(test_image, f"child-{unique}"), depends_on=[dep])
    grandchild = producer.submit(_req(test_image, f"grandchild-{unique}"), depends_on=[child])
    assert producer.cancel(dep) == "cancelled"
    spawn_worker(env=FAST_REAP_ENV)  # its reaper pass finds the deferred dependents
    outcomes = producer.wait_many([child, grandchild], timeout=60)
    assert [o.error.message for o in outcomes.values()] == [
        f"dependency {dep} ended cancelled", f"dependency {child} ended cancelled"
    ]


def test_worker_killed_mid_dependency(producer, spawn_worker, test_image, unique, docker_client):
    doomed = spawn_worker(env=FAST_REAP_ENV)
    dep = producer.submit(_req(test_image, f"kdep-{unique}", "sleep", "300"))
    child = producer.submit(_req(test_image, f"kchild-{unique}"), depends_on=[dep])
    deadline = time.monotonic() + 60
    while producer.status(dep).state.value != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    doomed.kill()
    spawn_worker("--executor-id", f"{spawn_worker.executor_id}-other", env=FAST_REAP_ENV)
    outcomes = producer.wait_many([dep, child], timeout=120)
    assert outcomes[dep].status == ExecutionStatus.LOST
    assert outcomes[child].status == ExecutionStatus.CANCELLED
    assert outcomes[child].error.message == f"dependency {dep} ended lost"
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={child}"})
