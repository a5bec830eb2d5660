"""AsyncProducer on redis.asyncio against real Redis and a real worker: same wire, same errors."""

from __future__ import annotations

import asyncio

import pytest
from rq.job import Job

from producer import AsyncProducer, DuplicateExecution, ExecutionAlreadyFinished, ExecutionNotFound, InvalidRequest, Producer, WaitTimeout
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def _req(image, eid, *cmd, **fields):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd or ("true",))}, **fields}


def test_async_producer_end_to_end(redis_url, spawn_worker, test_image, unique):
    spawn_worker()

    async def scenario():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            eid = await ap.submit(_req(test_image, f"a1-{unique}", "sh", "-c", "echo one; echo two >&2; exit 3"))
            lines = [(e.stream, e.data) async for e in ap.logs(eid, follow=True)]
            outcome = await ap.wait(eid, timeout=60)
            view = await ap.status(eid)
            many = await ap.submit_many([_req(test_image, f"m{i}-{unique}", "sh", "-c", f"exit {i}") for i in range(3)])
            ended = [o.execution_id async for o in ap.as_completed(many, timeout=60)]
            outcomes = await ap.wait_many(many, timeout=5)
            slow = await ap.submit(_req(test_image, f"slow-{unique}", "sleep", "300"))
            with pytest.raises(WaitTimeout) as info:
                await ap.wait_many([slow], timeout=0.5)
            while (await ap.status(slow)).state.value != "running":
                await asyncio.sleep(0.05)
            assert await ap.cancel(slow) == "signalled"
            cancelled = await ap.wait(slow, timeout=30)
            with pytest.raises(ExecutionAlreadyFinished):
                await ap.cancel(slow)
            return lines, outcome, view, many, ended, outcomes, info.value, cancelled

    lines, outcome, view, many, ended, outcomes, timeout_error, cancelled = asyncio.run(scenario())
    assert sorted(lines) == [("stderr", "two\n"), ("stdout", "one\n")]  # streams are kept apart, not ordered
    assert (outcome.status, outcome.exit_code) == (ExecutionStatus.FAILED, 3)
    assert view.state.value == "failed" and view.worker
    assert sorted(ended) == sorted(many)
    assert [o.exit_code for o in outcomes.values()] == [0, 1, 2]
    assert timeout_error.pending == [f"slow-{unique}"]
    assert cancelled.status == ExecutionStatus.CANCELLED


def test_async_errors_and_wire_match_the_sync_producer(redis_url, redis_client, test_image, unique):
    queue, prefix = f"q-{unique}", f"p-{unique}"
    sync = Producer(redis_url, queue=queue, prefix=prefix)

    async def scenario():
        async with AsyncProducer(redis_url, queue=queue, prefix=prefix) as ap:
            await ap.submit(_req(test_image, f"wa-{unique}", "echo", "x", timeout_seconds=5))
            await ap.submit_many([_req(test_image, f"wma-{unique}")])
            with pytest.raises(DuplicateExecution):
                await ap.submit(_req(test_image, f"wa-{unique}"))
            with pytest.raises(InvalidRequest, match="engine.image"):
                await ap.submit({"execution_id": f"bad-{unique}", "engine": {}})
            with pytest.raises(ExecutionNotFound):
                await ap.wait(f"ghost-{unique}")
            with pytest.raises(ExecutionNotFound):
                await ap.status(f"ghost-{unique}")
            with pytest.raises(ExecutionNotFound):
                await ap.cancel(f"ghost-{unique}")
            assert await ap.cancel(f"wma-{unique}") == "cancelled"
            return await ap.wait(f"wma-{unique}", timeout=5)

    cancelled = asyncio.run(scenario())
    sync.submit(_req(test_image, f"ws-{unique}", "echo", "x", timeout_seconds=5))
    sync.submit_many([_req(test_image, f"wms-{unique}")])
    sync.cancel(f"wms-{unique}")
    assert cancelled.status == ExecutionStatus.CANCELLED and cancelled == sync.wait(f"wms-{unique}").model_copy(
        update={"execution_id": f"wma-{unique}"}
    )
    varying = {b"created_at", b"enqueued_at", b"data", b"description", b"meta", b"ended_at", b"last_heartbeat"}

    def fields(eid):
        raw = redis_client.hgetall(Job.key_for(eid))
        return {k: v for k, v in raw.items() if k not in varying}

    assert fields(f"wa-{unique}") == fields(f"ws-{unique}")
    assert fields(f"wma-{unique}") == fields(f"wms-{unique}")
    a, s = (Job.fetch(i, connection=redis_client) for i in (f"wa-{unique}", f"ws-{unique}"))
    assert a.meta.keys() == s.meta.keys() and a.description.replace("wa-", "ws-") == s.description
    assert redis_client.lrange(f"rq:queue:{queue}", 0, -1) == [f"wa-{unique}".encode(), f"ws-{unique}".encode()]
    sync.close()


def test_async_logs_of_an_ended_execution_read_its_compact_log(redis_url, redis_client, spawn_worker, test_image, unique):
    """A small log that ended is kept as one compact key (P:exec:ID:logz), not a stream: the async
    reader finds it for the whole history and for --tail, which counts lines as docker logs does."""
    from schemas import Keys

    spawn_worker()

    async def scenario():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            eid = await ap.submit(_req(test_image, f"z-{unique}", "sh", "-c", "seq 1 10"))
            await ap.wait(eid, timeout=60)
            keys = Keys(spawn_worker.prefix)
            compacted = redis_client.exists(keys.log_compact(eid)) and not redis_client.exists(keys.log_stream(eid))
            everything = "".join([e.data async for e in ap.logs(eid, follow=False)])
            followed = "".join([e.data async for e in ap.logs(eid, follow=True)])
            last_two = "".join([e.data async for e in ap.logs(eid, tail=2, follow=False)])
            return compacted, everything, followed, last_two

    compacted, everything, followed, last_two = asyncio.run(scenario())
    assert compacted
    assert everything == followed == "".join(f"{i}\n" for i in range(1, 11))
    assert last_two == "9\n10\n"
