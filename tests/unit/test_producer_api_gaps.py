"""``submit_many(..., depends_on=)`` and ``AsyncProducer.submit(..., inputs=)`` on fakeredis: what
they write is what ``submit(depends_on=)`` / ``Producer.submit(inputs=)`` write."""

from __future__ import annotations

import asyncio
import io
import tarfile

import fakeredis
import pytest
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry
from rq.serializers import JSONSerializer

from producer import AsyncProducer, InvalidRequest, Producer
from producer.files import InputsTooLarge
from schemas import Keys

KEYS = Keys("p")


def _req(eid: str) -> dict:
    return {"execution_id": eid, "engine": {"image": "busybox", "cmd": ["true"]}}


@pytest.fixture
def prod(fake_redis):
    return Producer(connection=fake_redis, prefix="p", queue="jobs")


def test_submit_many_depends_on_defers_every_one_like_submit(prod, fake_redis):
    first = prod.submit(_req("first"))
    ids = prod.submit_many([_req("m1"), _req("m2")], depends_on=[first], group="after-first")
    single = prod.submit(_req("single"), depends_on=[first])
    deferred = DeferredJobRegistry("jobs", connection=fake_redis, serializer=JSONSerializer)
    for eid in (*ids, single):
        job = Job.fetch(eid, connection=fake_redis, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.DEFERRED
        assert job.dependency_ids == [first] and job.allow_dependency_failures
        assert eid in deferred.get_job_ids()
        assert prod.status(eid).state.value == "queued"  # as a deferred one is shown
    assert sorted(Job.fetch(first, connection=fake_redis, serializer=JSONSerializer).dependent_ids) == [
        "m1", "m2", "single"]
    assert fake_redis.lrange("rq:queue:jobs", 0, -1) == [b"first"]  # none of them enqueued yet
    assert [v.execution_id for v in prod.group("after-first")] == ids
    # The same hash fields as submit(depends_on=) writes (but the id, times and description).
    varying = {b"id", b"created_at", b"description", b"data", b"group_id", b"meta", b"enqueued_at"}
    m1 = {k: v for k, v in fake_redis.hgetall(Job.key_for("m1")).items() if k not in varying}
    one = {k: v for k, v in fake_redis.hgetall(Job.key_for("single")).items() if k not in varying}
    assert m1 == one


def test_submit_many_depends_on_refuses_before_writing(prod, fake_redis):
    prod.submit(_req("known"))
    before = sorted(fake_redis.keys("*"))
    with pytest.raises(InvalidRequest, match="depends_on: no such execution: ghost"):
        prod.submit_many([_req("n1"), _req("n2")], depends_on=["known", "ghost"])
    with pytest.raises(InvalidRequest, match=r"requests\[1\]: depends_on: an execution cannot depend on itself"):
        prod.submit_many([_req("n3"), _req("known")], depends_on=["known"])
    with pytest.raises(InvalidRequest, match="depends_on.0"):
        prod.submit_many([_req("n4")], depends_on=["not an id"])
    assert sorted(fake_redis.keys("*")) == before


def test_async_submit_inputs_writes_the_archive_the_sync_producer_writes(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("alpha\n")
    inputs = {"/work/in": tmp_path / "data", "/etc/app.conf": b"k=v\n"}
    server = fakeredis.FakeServer()
    sync = Producer(connection=fakeredis.FakeRedis(server=server), prefix="p", queue="jobs")
    sync.submit(_req("sync-in"), inputs=inputs)

    async def scenario() -> tuple[str, bytes | None]:
        client = fakeredis.FakeAsyncRedis(server=server)
        async with AsyncProducer(connection=client, prefix="p", queue="jobs", max_input_bytes=1024) as ap:
            ap._server_version = (7, 2, 0)  # fakeredis has no INFO; AsyncProducer reads it once for rq
            eid = await ap.submit(_req("async-in"), inputs=inputs)
            with pytest.raises(InputsTooLarge):
                await ap.submit(_req("async-big"), inputs={"/big": b"x" * 2048})
            return eid, await client.get(KEYS.inputs("async-big"))

    eid, big = asyncio.run(scenario())
    check = fakeredis.FakeRedis(server=server)
    assert eid == "async-in" and big is None and not check.exists(Job.key_for("async-big"))
    # The same entries: the mtime of a bytes input is its submit time, a second apart at times.
    assert _members(check.get(KEYS.inputs("async-in"))) == _members(check.get(KEYS.inputs("sync-in")))
    sync_request = Job.fetch("sync-in", connection=check, serializer=JSONSerializer).args[0]
    async_request = Job.fetch("async-in", connection=check, serializer=JSONSerializer).args[0]
    assert async_request["inputs"] == sync_request["inputs"] and async_request["inputs"]["paths"] == [
        "/etc/app.conf", "/work/in"]


def _members(archive: bytes) -> list[tuple[str, int, int, bytes | None]]:
    """(name, type, mode, data) of each entry of an input archive, in order."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        return [(m.name, m.type, m.mode, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
