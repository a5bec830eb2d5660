"""An attached ``dockrq submit`` interrupted by Ctrl-C, SIGTERM or SIGHUP, on a real worker, Redis
and dockerd: the execution is cancelled (as ``docker run``'s --sig-proxy stops the container),
its outputs are still written to ``--output-dir``, and the client exits 128 + the signal; a
second signal stops the bounded wait for the outcome with one line saying how to get them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas import ExecutionStatus

pytestmark = pytest.mark.integration

SCRIPT = "mkdir -p /o && echo kept > /o/f && echo started && exec sleep 60"


def attached(redis_url, worker, *args, cwd):
    """``dockrq submit ...`` attached, SIGINT as in a terminal (a background job inherits it ignored)."""
    entry = Path(sys.executable).with_name("dockrq")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "producer.cli"]
    return subprocess.Popen(
        [*base, "--redis-url", redis_url, "--queue", worker.queue, "--prefix", worker.prefix, "submit", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def until_started(proc) -> None:
    line = proc.stdout.readline()
    assert line == "started\n", (line, proc.stderr.read() if proc.poll() is not None else "")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_cancels_waits_and_writes_the_outputs(producer, spawn_worker, redis_url, test_image, tmp_path, signum):
    worker = spawn_worker(ready=False)  # the client and the worker start at the same time
    eid = f"sig-{uuid.uuid4().hex[:8]}"
    proc = attached(redis_url, spawn_worker, "--id", eid, "--output", "/o/", "--output-dir", "ci",
                    "--stop-timeout", "1", test_image, "sh", "-c", SCRIPT, cwd=tmp_path)
    try:
        spawn_worker.ready(1, [worker])
        until_started(proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err.endswith(f"dockrq: cancelled execution {eid}\n"), err
    assert (tmp_path / "ci" / "o" / "f").read_text() == "kept\n"
    outcome = producer.wait(eid, timeout=5)
    assert outcome.status is ExecutionStatus.CANCELLED


def test_a_second_signal_stops_waiting_and_says_how_to_get_the_outputs(
    producer, spawn_worker, redis_url, test_image, tmp_path
):
    worker = spawn_worker(ready=False)  # the client and the worker start at the same time
    eid = f"sig2-{uuid.uuid4().hex[:8]}"
    proc = attached(redis_url, spawn_worker, "--id", eid, "--output", "/o", "--output-dir", "ci",
                    test_image, "sh", "-c", SCRIPT, cwd=tmp_path)
    try:
        spawn_worker.ready(1, [worker])
        until_started(proc)
        worker.kill()  # nobody left to stop the container and write the outcome: the wait would run on
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)  # the client is waiting for the outcome now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.splitlines()[-2:] == [
        f"dockrq: stopped waiting for the outcome; once it has ended get the outputs with dockrq cp {eid}:PATH DEST",
        f"dockrq: cancel requested for execution {eid}; it has not ended yet",  # not "cancelled": it runs on
    ], err
    assert not (tmp_path / "ci").exists()
