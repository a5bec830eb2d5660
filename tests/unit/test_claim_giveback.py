"""A refused duplicate writes nothing (issue 14 trial): CLAIM_LUA gives back a claim it
won for an id whose rq job or outcome already exists (fakeredis runs the Lua with lupa)."""

from __future__ import annotations

import pytest

from producer import DuplicateExecution, Producer
from schemas import ExecutionStatus, Keys, Outcome

REQUEST = {"engine": {"image": "busybox:latest", "cmd": ["true"]}}


@pytest.fixture
def producer(fake_redis):
    with Producer(connection=fake_redis, queue="q", prefix="p") as p:
        yield p


def test_submit_many_refused_for_an_existing_job_leaves_no_claim(producer, fake_redis):
    producer.submit({**REQUEST, "execution_id": "kept"})  # one script, no claim
    before = sorted(fake_redis.keys("*"))
    with pytest.raises(DuplicateExecution) as err:
        producer.submit_many([{**REQUEST, "execution_id": "new"}, {**REQUEST, "execution_id": "kept"}])
    assert err.value.execution_ids == ["kept"]
    assert sorted(fake_redis.keys("*")) == before
    assert not fake_redis.exists("p:exec:kept:claimed")


def test_submit_with_inputs_refused_for_a_kept_outcome_leaves_no_claim(producer, fake_redis):
    outcome = Outcome.failure("ended", ExecutionStatus.LOST, "worker_lost", "gone")
    fake_redis.rpush(Keys("p").outcome("ended"), outcome.model_dump_json())
    before = sorted(fake_redis.keys("*"))
    with pytest.raises(DuplicateExecution):
        producer.submit({**REQUEST, "execution_id": "ended"}, inputs={"/work/one": b"1"})
    assert sorted(fake_redis.keys("*")) == before
