"""rq's scheduling features through dockrq on real workers and Redis: at_front, groups."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from producer.cli import cli
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def _req(image, eid, *cmd, **fields):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd or ("true",))}, **fields}


def test_at_front_runs_first(producer, spawn_worker, redis_url, test_image, unique):
    first = producer.submit(_req(test_image, f"first-{unique}"))
    second = producer.submit(_req(test_image, f"second-{unique}"))
    result = CliRunner().invoke(
        cli, ["--redis-url", redis_url, "--queue", spawn_worker.queue, "--prefix", spawn_worker.prefix,
              "submit", "-d", "--at-front", "--id", f"urgent-{unique}", test_image, "true"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    urgent = result.stdout.strip()
    spawn_worker()  # one worker: runs them one by one, in queue order
    outcomes = producer.wait_many([first, second, urgent], timeout=120)
    assert all(o.status == ExecutionStatus.SUCCEEDED for o in outcomes.values())
    started = sorted(outcomes, key=lambda eid: outcomes[eid].result.started_at)
    assert started == [urgent, first, second]


def test_group_lists_its_executions_with_their_states(producer, spawn_worker, redis_url, redis_client, test_image, unique):
    import asyncio

    from producer import AsyncProducer, InvalidRequest

    name = f"nightly-{unique}"
    ids = producer.submit_many(
        [_req(test_image, f"g{i}-{unique}", "sh", "-c", f"exit {i}") for i in range(3)], group=name
    )
    other = producer.submit_many([_req(test_image, f"nogroup-{unique}")])
    assert redis_client.smembers(f"rq:group:{name}") == {i.encode() for i in ids}  # rq's Group
    assert {v.state.value for v in producer.group(name)} == {"queued"}
    with pytest.raises(InvalidRequest, match="group"):
        producer.submit_many([_req(test_image, f"bad-{unique}")], group="no spaces")
    spawn_worker()
    producer.wait_many(ids + other, timeout=120)
    views = producer.group(name)
    assert [(v.execution_id, v.state.value, v.outcome.exit_code) for v in views] == [
        (ids[0], "succeeded", 0), (ids[1], "failed", 1), (ids[2], "failed", 2)
    ]

    async def via_async():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            more = await ap.submit_many([_req(test_image, f"ga-{unique}")], group=name)
            return more, [v.execution_id for v in await ap.group(name)]

    more, listed = asyncio.run(via_async())
    assert sorted(listed) == sorted(ids + more)
    result = CliRunner().invoke(
        cli, ["--redis-url", redis_url, "--queue", spawn_worker.queue, "--prefix", spawn_worker.prefix,
              "--json", "ls", "--group", name], catch_exceptions=False,
    )
    assert result.exit_code == 0
    import json

    assert sorted(v["execution_id"] for v in json.loads(result.stdout)) == sorted(ids + more)
    producer.wait_many(more, timeout=60)


def test_ls_lists_executions_waiting_on_a_dependency_or_a_concurrency_slot(producer, test_image, unique):
    """Deferred (--depends-on) and rate-limited (--concurrency-limit) executions sit in no
    queue list; `dockrq ls` / list_recent shows them as queued, as `status` does."""
    first = producer.submit(_req(test_image, f"dep-{unique}"))  # nobody serves this queue: stays queued
    after = producer.submit(_req(test_image, f"after-{unique}"), depends_on=[first])
    limited = [
        producer.submit(_req(test_image, f"lim{i}-{unique}", concurrency_key=f"k-{unique}", concurrency_limit=1))
        for i in range(2)
    ]
    ids = {first, after, *limited}
    listed = {v.execution_id: v.state.value for v in producer.list_recent(50) if v.execution_id in ids}
    assert listed == {i: producer.status(i).state.value for i in ids}
    assert set(listed) == ids and set(listed.values()) == {"queued"}
    assert {v.execution_id for v in producer.list_recent(50, ["elsewhere"])} & ids == set()
    for i in ids:
        producer.cancel(i)
