"""A refused duplicate writes nothing on real Redis (issue 14 trial: a ``submit_many`` or a
``submit`` with inputs refused as a duplicate of an existing execution left its
``P:exec:ID:claimed`` key for 24 h). Before and after each refusal, the keys of this test
(prefix, queue and ids all carry its unique token) are the same."""

from __future__ import annotations

import asyncio

import pytest

from producer import AsyncProducer, DuplicateExecution, Producer
from schemas import ExecutionStatus, Keys, Outcome

pytestmark = pytest.mark.integration


def _keys(client, unique: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"*{unique}*", count=1000))


def test_refused_duplicates_leave_no_key(redis_url, redis_client, test_image, unique):
    prefix, queue = f"dq-{unique}", f"q-{unique}"
    request = {"engine": {"image": test_image, "cmd": ["true"]}}
    kept, ended, fresh = f"kept-{unique}", f"ended-{unique}", f"fresh-{unique}"
    keys = Keys(prefix)
    try:
        with Producer(redis_url, queue=queue, prefix=prefix) as producer:
            producer.submit({**request, "execution_id": kept})  # its rq job exists (nobody works the queue)
            outcome = Outcome.failure(ended, ExecutionStatus.LOST, "worker_lost", "gone")  # an ended one, job deleted
            redis_client.rpush(keys.outcome(ended), outcome.model_dump_json())
            redis_client.expire(keys.outcome(ended), 300)
            before = _keys(redis_client, unique)

            for taken in (kept, ended):
                with pytest.raises(DuplicateExecution):
                    producer.submit_many([{**request, "execution_id": fresh}, {**request, "execution_id": taken}])
                assert _keys(redis_client, unique) == before, taken
                with pytest.raises(DuplicateExecution):
                    producer.submit({**request, "execution_id": taken}, inputs={"/work/one": b"1"})
                assert _keys(redis_client, unique) == before, taken

        async def refused_async() -> None:
            async with AsyncProducer(redis_url, queue=queue, prefix=prefix) as ap:
                with pytest.raises(DuplicateExecution):
                    await ap.submit_many([{**request, "execution_id": fresh}, {**request, "execution_id": kept}])

        asyncio.run(refused_async())
        assert _keys(redis_client, unique) == before
        assert not redis_client.exists(keys.claim(kept), keys.claim(ended), keys.claim(fresh))
    finally:
        found = _keys(redis_client, unique)
        if found:
            redis_client.delete(*found)
        redis_client.srem("rq:queues", f"rq:queue:{queue}")
