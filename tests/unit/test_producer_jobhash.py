"""Batched rq job hashes (producer.jobhash): exactly what rq's enqueue_many writes."""

from __future__ import annotations

import fakeredis
import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from producer import Producer
from producer.client import parse_request
from producer.jobhash import TIMESTAMPS, JobWriter

REQUESTS = [
    {"execution_id": "plain", "engine": {"image": "busybox", "cmd": ["true"]}},
    {
        "execution_id": "rich",
        "engine": {"image": "reg.example:5000/team/app:1.2", "cmd": ["sh", "-c", "echo 'é ✓' \"$X\""],
                   "env": {"X": "secret", "Y": ""}, "working_dir": "/w"},
        "resources": {"cpus": 0.5, "memory": "256m", "pids": 64},
        "timeout_seconds": 12.5,
        "output_limit_bytes": 4096,
        "retries": 2,
    },
    {"execution_id": "no-cmd", "engine": {"image": "busybox"}, "network": "bridge", "timeout_seconds": 1},
]


def _producer(server: fakeredis.FakeServer) -> Producer:
    return Producer(connection=fakeredis.FakeRedis(server=server), queue="q", prefix="p", retention_seconds=600)


def _specs(producer: Producer) -> list[dict]:
    return [producer._job_spec(parse_request(r)) for r in REQUESTS]


def test_batched_hashes_are_what_rq_enqueue_many_writes():
    ours, theirs = _producer(fakeredis.FakeServer()), _producer(fakeredis.FakeServer())
    writer = ours._job_writer(ours.rq_queue())
    assert writer is not None
    with ours.connection.pipeline() as pipe:
        writer.write(pipe, _specs(ours))
        pipe.execute()
    q = theirs.rq_queue()
    q.enqueue_many([Queue.prepare_data(**s) for s in _specs(theirs)])

    for r in (ours.connection, theirs.connection):
        assert r.lrange("rq:queue:q", 0, -1) == [b"plain", b"rich", b"no-cmd"]
        assert r.smembers("rq:queues") == {b"rq:queue:q"}
    assert sorted(ours.connection.keys("*")) == sorted(theirs.connection.keys("*"))
    for request in REQUESTS:
        key = Job.key_for(request["execution_id"])
        mine, rqs = ours.connection.hgetall(key), theirs.connection.hgetall(key)
        for field in TIMESTAMPS:
            utcparse(mine.pop(field.encode()).decode())  # a timestamp in rq's format
            rqs.pop(field.encode())
        assert mine == rqs
        assert ours.connection.ttl(key) == theirs.connection.ttl(key)
        # and rq reads it back as the job it enqueued
        job = Job.fetch(request["execution_id"], connection=ours.connection, serializer=JSONSerializer)
        assert job.args == [parse_request(request).model_dump(mode="json")]
        assert job.get_status() == "queued" and job.origin == "q"


def test_submit_many_uses_rq_when_rq_writes_something_else(monkeypatch, caplog):
    original = Job.to_dict

    def to_dict(self, *args, **kwargs):  # a future rq that stores one more field, per job
        return {**original(self, *args, **kwargs), "new_field": f"about {self.id}"}

    monkeypatch.setattr(Job, "to_dict", to_dict)
    producer = _producer(fakeredis.FakeServer())
    assert producer.submit_many(REQUESTS) == ["plain", "rich", "no-cmd"]
    assert producer._writers == {"q": None}
    assert "enqueue_many" in caplog.text
    assert producer.connection.hget("rq:job:rich", "new_field") == b"about rich"
    assert producer.rq_queue().get_job_ids() == ["plain", "rich", "no-cmd"]


def test_a_field_rq_adds_to_every_job_alike_is_carried(monkeypatch):
    original = Job.to_dict
    monkeypatch.setattr(Job, "to_dict", lambda self, *a, **k: {**original(self, *a, **k), "new_field": "1"})
    producer = _producer(fakeredis.FakeServer())
    assert producer.submit_many(REQUESTS) == ["plain", "rich", "no-cmd"]
    assert producer._writers["q"] is not None
    assert producer.connection.hget("rq:job:no-cmd", "new_field") == b"1"


def test_nothing_reaches_redis_while_checking_against_rq():
    producer = _producer(fakeredis.FakeServer())
    assert JobWriter.for_queue(producer.rq_queue(), _specs(producer)[:2]) is not None
    assert producer.connection.keys("*") == []


@pytest.mark.parametrize("spec_change", [{"result_ttl": 5}, {"depends_on": "other"}])
def test_a_spec_the_template_does_not_cover_goes_through_rq(spec_change):
    producer = _producer(fakeredis.FakeServer())
    writer = producer._job_writer(producer.rq_queue())
    assert writer is not None
    spec = _specs(producer)[0]
    assert writer.accepts(spec)
    assert not writer.accepts({**spec, **spec_change})
