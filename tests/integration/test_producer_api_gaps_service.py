"""On real Redis and a real worker: ``AsyncProducer.submit(inputs=)`` puts files into the container
as ``Producer.submit(inputs=)`` does; ``submit_many(depends_on=)`` starts the batch only after its
dependencies succeeded, and cancels it (``dependency_failed``) when one did not."""

from __future__ import annotations

import asyncio

import pytest

from producer import AsyncProducer
from scripts.faults import FAST_REAP_ENV
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def _req(image, eid, *cmd):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd or ("true",))}}


def test_async_submit_with_inputs_runs_with_the_files(redis_url, spawn_worker, test_image, unique, tmp_path, redis_client):
    spawn_worker()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("alpha\n")

    async def scenario():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            eid = await ap.submit(
                _req(test_image, f"ain-{unique}", "sh", "-c", "cat /work/in/a.txt /etc/app.conf"),
                inputs={"/work/in": tmp_path / "in", "/etc/app.conf": b"k=v\n"},
            )
            return await ap.wait(eid, timeout=60)

    outcome = asyncio.run(scenario())
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome.error
    assert outcome.result.stdout == "alpha\nk=v\n"


def test_submit_many_depends_on(producer, spawn_worker, test_image, unique):
    spawn_worker(env=FAST_REAP_ENV)
    spawn_worker(env=FAST_REAP_ENV)
    first = producer.submit(_req(test_image, f"first-{unique}", "sleep", "1"))
    batch = producer.submit_many([_req(test_image, f"b{i}-{unique}") for i in range(2)], depends_on=[first])
    bad = producer.submit(_req(test_image, f"bad-{unique}", "sh", "-c", "exit 1"))
    blocked = producer.submit_many([_req(test_image, f"x{i}-{unique}") for i in range(2)], depends_on=[first, bad])
    outcomes = producer.wait_many([first, *batch, bad, *blocked], timeout=120)
    assert [outcomes[i].status for i in batch] == [ExecutionStatus.SUCCEEDED] * 2
    for eid in batch:
        assert outcomes[eid].result.started_at >= outcomes[first].result.finished_at
    for eid in blocked:
        assert (outcomes[eid].status, outcomes[eid].error.code) == (ExecutionStatus.CANCELLED, "dependency_failed")
