"""``dockrq-worker run --pool N`` members carry dockrq's worker names in rq's workers
registry (issue 14 trial: they were rq's random ``uuid4().hex``): ``<executor id>.<pool
pid>.<random>-<n>``, a respawned member the next n, another pool another random part."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from rq import Queue, Worker

pytestmark = pytest.mark.integration


def _names(redis_client, queue: str, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        workers = Worker.all(queue=Queue(queue, connection=redis_client))
        if len(workers) >= count:
            return sorted(w.name for w in workers)
        assert time.monotonic() < deadline, [w.name for w in workers]
        time.sleep(0.1)


def test_pool_members_are_named_as_single_workers(spawn_worker, redis_client):
    pool = spawn_worker("--pool", "2", ready=False)
    names = _names(redis_client, spawn_worker.queue, 2)
    pattern = rf"{re.escape(spawn_worker.executor_id)}\.{pool.pid}\.([0-9a-f]{{6}})-([12])"
    matches = [re.fullmatch(pattern, n) for n in names]
    assert all(matches), names
    assert len({m.group(1) for m in matches}) == 1 and sorted(m.group(2) for m in matches) == ["1", "2"]

    # A member that dies is respawned under the next number, never a name used before.
    member = next(w for w in Worker.all(queue=Queue(spawn_worker.queue, connection=redis_client)) if w.name == names[0])
    os.kill(member.pid, signal.SIGKILL)
    respawned = _names(redis_client, spawn_worker.queue, 3)
    assert any(n.endswith("-3") and n.startswith(names[0][:-2]) for n in respawned), respawned

    # Another pool (another process, or this host after a restart): names of its own.
    other = spawn_worker("--pool", "2", ready=False)
    everyone = _names(redis_client, spawn_worker.queue, 5)
    theirs = [n for n in everyone if re.fullmatch(rf"{re.escape(spawn_worker.executor_id)}\.{other.pid}\.[0-9a-f]{{6}}-[12]", n)]
    assert len(theirs) == 2 and len(set(everyone)) == len(everyone), everyone
