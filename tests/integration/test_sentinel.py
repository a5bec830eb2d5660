"""Redis under Sentinel: a ``redis+sentinel://`` URL everywhere, and a failover mid-run.

Real processes on loopback (scripts/sentinel_group.py): one master, one replica,
three Sentinels (down-after 1 s). Workers, the producer, the CLI and doctor are
given the Sentinel URL; the master is SIGKILLed while executions run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from producer import Producer
from schemas import ExecutionStatus
from schemas.connections import client_from_url
from scripts.faults import FAST_REAP_ENV
from scripts.sentinel_group import SentinelGroup

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


@pytest.fixture
def sentinel_group(tmp_path):
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        group.start()
    except RuntimeError as exc:  # pragma: no cover - environment problem
        group.stop()
        pytest.fail(f"Sentinel group did not start (is redis-sentinel installed? scripts/setup.sh): {exc}")
    yield group
    group.stop()


def _request(eid, *cmd, **fields):
    return {"execution_id": eid, "engine": {"image": "dockrq-test/busybox:latest", "cmd": list(cmd)}, **fields}


def test_sentinel_failover_mid_run(sentinel_group, spawn_worker, unique, dashboard_json):
    url = sentinel_group.url
    env = {**FAST_REAP_ENV, "DOCKRQ_REPLICA_ACKS": "1"}
    workers = spawn_worker.many(2, redis_url=url, env=env)
    doctor = subprocess.run([str(BIN / "dockrq-worker"), "doctor", "--redis-url", url], capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0 and f"/{sentinel_group.service}/0" in doctor.stdout, doctor.stdout + doctor.stderr

    producer = Producer(url, queue=spawn_worker.queue, prefix=spawn_worker.prefix, replica_acks=1)
    before = [producer.submit(_request(f"pre{i}-{unique}", "sh", "-c", f"echo begin; sleep {1 + i % 3}; echo end"))
              for i in range(6)]
    results: dict[str, object] = {}

    def record(key, fn):
        try:
            results[key] = fn()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[key] = exc

    threads = [threading.Thread(target=record, args=(f"wait-{e}", lambda e=e: producer.wait(e, timeout=180)), daemon=True)
               for e in before]
    threads += [threading.Thread(target=record, args=(f"logs-{e}", lambda e=e: list(producer.logs(e, follow=True))),
                                 daemon=True) for e in before[:3]]
    for t in threads:
        t.start()
    time.sleep(1.0)  # some run, some queued

    old = sentinel_group.kill_master()
    new = sentinel_group.wait_failover(old)
    assert new != old
    after = [producer.submit(_request(f"post{i}-{unique}", "echo", "after")) for i in range(3)]

    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a waiter or log follower hangs after the failover"
    for e in before:
        outcome = results[f"wait-{e}"]
        assert not isinstance(outcome, BaseException), f"{e}: {outcome!r}"
        assert outcome.status == ExecutionStatus.SUCCEEDED, f"{e}: {outcome}"
    for e in before[:3]:
        assert not isinstance(results[f"logs-{e}"], BaseException), results[f"logs-{e}"]
    for e in after:
        assert producer.wait(e, timeout=120).status == ExecutionStatus.SUCCEEDED
    client = client_from_url(url)
    for e in before + after:
        assert client.llen(producer.keys.outcome(e)) == 1, f"{e}: not exactly one outcome"
    assert all(w.popen.poll() is None for w in workers), "a worker died in the failover"

    # The CLI follows the new master too.
    listing = subprocess.run(
        [str(BIN / "dockrq"), "--redis-url", url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue, "ls"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )
    assert listing.returncode == 0 and after[0] in listing.stdout, listing.stdout + listing.stderr
    # rq-dashboard, configured as scripts/dashboard.sh does, reads the same URL and the new master.
    dash = dashboard_json(url)
    assert spawn_worker.queue in [q["name"] for q in dash("/data/queues.json")["queues"]]
    assert json.loads(dash(f"/data/job/{after[0]}.json")["metadata"])["execution_id"] == after[0]
    # A worker still stops on SIGTERM after the failover (a Sentinel connection cut mid-read is closed).
    workers[0].signal(signal.SIGTERM)
    assert workers[0].wait(30) == 0
    client.close()
    producer.close()
