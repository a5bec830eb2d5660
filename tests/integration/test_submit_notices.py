"""An attached ``dockrq submit`` on real Redis and a real worker says what it waits for: a
dependency that has not succeeded yet, not "waiting for a worker"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.faults import FAST_REAP_ENV

pytestmark = pytest.mark.integration

DOCKRQ = Path(sys.executable).with_name("dockrq")


def test_attached_submit_names_the_dependency_it_waits_for(spawn_worker, producer, redis_url, test_image, unique):
    spawn_worker(env=FAST_REAP_ENV)
    first = producer.submit({"execution_id": f"first-{unique}", "engine": {"image": test_image, "cmd": ["sleep", "3"]}})
    got = subprocess.run(
        [str(DOCKRQ), "--redis-url", redis_url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue,
         "submit", "--depends-on", first, test_image, "echo", "after"],
        capture_output=True, text=True, timeout=120,
    )
    assert (got.returncode, got.stdout) == (0, "after\n"), got.stderr
    assert f"dockrq: waiting for dependency {first} to succeed (--depends-on)\n" in got.stderr
    assert not got.stderr.startswith("dockrq: waiting for a worker"), got.stderr
