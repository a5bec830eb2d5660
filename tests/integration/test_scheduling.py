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
