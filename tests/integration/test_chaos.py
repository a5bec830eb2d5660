"""scripts/chaos.py on tiny sizes: its figures say every execution ended once, nothing hung or leaked.

No dockerd restart here (that one is tests/integration/test_zz_daemon_restart.py);
workers are SIGKILLed and restarted and the session's own Redis is restarted once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos.py"


def test_chaos_session_on_tiny_sizes(docker_client):
    run = subprocess.run(
        [
            # three workers drain the ten executions sooner than two; Redis stays down 1 s (not 3)
            sys.executable, str(SCRIPT), "--executions", "10", "--workers", "3", "--no-restart-dockerd",
            "--kill-every", "2", "4", "--redis-down", "1", "--seed", "7", "--hang-after", "150", "--json",
        ],
        capture_output=True, text=True, timeout=280,
    )
    assert run.stdout.strip(), run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, (figures, run.stderr[-4000:])
    assert figures["ok"] is True
    assert figures["submitted"] == 10
    assert figures["outcomes"] == 10 and figures["missing"] == 0
    assert sum(figures["by_status"].values()) == 10
    assert set(figures["by_status"]) <= {"succeeded", "lost", "error"}
    assert figures["lost"] == figures["by_status"].get("lost", 0)
    assert (figures["duplicates"], figures["hung_waiters"], figures["orphan_containers"]) == (0, 0, 0)
    assert figures["worker_crashes"] == 0
    assert figures["redis_restarts"] == 1 and figures["dockerd_restarts"] == 0
    assert figures["worker_kills"] >= 1
    assert figures["recover_seconds"]["redis_restart"] is None or figures["recover_seconds"]["redis_restart"] < 60
    # It cleaned up after itself: no container of the session is left.
    left = docker_client.containers.list(ignore_removed=True, all=True, filters={"label": "dockrq.execution"})
    assert not [c for c in left if c.labels.get("dockrq.executor", "").startswith("chaos-")]
