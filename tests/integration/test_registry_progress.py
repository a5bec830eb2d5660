"""A pull is no longer silent: progress events on ``P:events``, the worker's log line, the
attached ``dockrq submit``'s stderr (never its stdout or ``--json``), the wait for a worker,
and the queued/pulling/running times ``status`` and ``ls`` keep after the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq.job import Job

from schemas import Event, ExecutionStatus, Outcome

pytestmark = pytest.mark.integration

MB = 1_000_000


def _dockrq(redis_url: str, spawn_worker, *args: str, **popen) -> subprocess.Popen:
    entry = Path(sys.executable).with_name("dockrq")
    env = {**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_PREFIX": spawn_worker.prefix,
           "DOCKRQ_QUEUE": spawn_worker.queue}
    return subprocess.Popen([str(entry), *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_progress_events_and_the_worker_log(spawn_worker, producer, registry, registry_images, redis_client):
    worker = spawn_worker(ready=False)
    image, _ = registry_images(registry, random_layers=2, layer_bytes=6 * MB)  # while the worker starts
    spawn_worker.ready(1, [worker])
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{spawn_worker.prefix}:events")
    try:
        eid = producer.submit({"engine": {"image": image, "cmd": ["true"]}})
        outcome = producer.wait(eid, timeout=60)
        events, quiet_until = [], time.monotonic() + 1.0
        while time.monotonic() < quiet_until:  # read until a second passes without an event
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                events.append(Event.model_validate_json(message["data"]))
                quiet_until = time.monotonic() + 1.0
    finally:
        pubsub.close()
    assert outcome.status is ExecutionStatus.SUCCEEDED, outcome
    mine = [e for e in events if e.execution_id == eid]
    reports = [e.progress for e in mine if e.progress is not None]
    assert all(e.status.value == "pulling" for e in mine if e.progress is not None)
    assert reports and reports[-1].done and sum(r.done for r in reports) == 1
    last = reports[-1]
    assert last.image == image and last.bytes_done == last.bytes_total >= 12 * MB
    assert last.layers_done == last.layers_total >= 2
    assert [r.bytes_done for r in reports] == sorted(r.bytes_done for r in reports)
    # rate-limited: a few a second at most (4/s, plus the last one)
    assert len(reports) <= 4 * outcome.result.pull_seconds + 2
    assert [e.status.value for e in mine if e.progress is None][-2:] == ["running", "succeeded"]
    log = worker.output()
    assert f"execution {eid}: pulled {image} (" in log and " MB in " in log


def test_attached_submit_shows_the_pull_on_stderr_only(spawn_worker, registry, registry_images, redis_url):
    workers = [spawn_worker(ready=False) for _ in range(2)]  # one for each submit; they start meanwhile
    image, _ = registry_images(registry, random_layers=1, layer_bytes=4 * MB)
    image2, _ = registry_images(registry, "img2", random_layers=1, layer_bytes=2 * MB)
    spawn_worker.ready(2, workers)
    # two attached submits at the same time (each pulls its own image on its own worker)
    run = _dockrq(redis_url, spawn_worker, "submit", image, "sh", "-c", "echo out; echo err >&2")
    # --json: stdout is the outcome's JSON alone, and stderr has no progress either
    run2 = _dockrq(redis_url, spawn_worker, "--json", "submit", image2, "echo", "hi")
    stdout, stderr = run.communicate(timeout=60)
    stdout2, stderr2 = run2.communicate(timeout=60)

    assert (run.returncode, stdout) == (0, "out\n"), stderr
    # (a loaded machine may leave it queued past the notice's second: that line is allowed)
    lines = [line for line in stderr.splitlines() if not line.startswith("dockrq: waiting for a worker on queue ")]
    assert lines[-1] == "err" and len(lines) == 2, stderr
    assert lines[0].startswith(f"dockrq: pulled {image}: ") and lines[0].endswith("s"), stderr
    assert " MB in " in lines[0]

    assert run2.returncode == 0 and stderr2 == "", stderr2
    outcome = Outcome.model_validate_json(stdout2)
    assert outcome.result.stdout == "hi\n" and outcome.result.pull_seconds is not None


def test_waiting_for_a_worker_is_said_then_it_runs(spawn_worker, redis_url, test_image):
    run = _dockrq(redis_url, spawn_worker, "submit", test_image, "echo", "hi")
    notice = f"dockrq: waiting for a worker on queue {spawn_worker.queue}\n"
    line = run.stderr.readline()  # blocks until the CLI says something on stderr
    assert line == notice
    spawn_worker()
    stdout, stderr = run.communicate(timeout=60)
    assert (run.returncode, stdout, stderr) == (0, "hi\n", "")


def test_status_and_ls_keep_queued_pulling_and_running_times(
    spawn_worker, producer, registry, registry_images, redis_url, redis_client
):
    image, _ = registry_images(registry, random_layers=1, layer_bytes=2 * MB)
    eid = producer.submit({"engine": {"image": image, "cmd": ["sleep", "0.5"]}})
    time.sleep(0.3)  # queued with no worker for a while
    spawn_worker()
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status is ExecutionStatus.SUCCEEDED
    result = outcome.result
    assert result.queued_seconds >= 0.3 and result.pull_seconds > 0 and result.duration_seconds >= 0.5

    Job.fetch(eid, connection=redis_client).delete()  # rq's record expired: the outcome alone remains
    # two reads of the same ended execution, run at the same time
    status = _dockrq(redis_url, spawn_worker, "--json", "status", eid)
    shown = _dockrq(redis_url, spawn_worker, "status", eid)
    view = json.loads(status.communicate(timeout=30)[0])
    shown = shown.communicate(timeout=30)[0]
    assert (view["queued_seconds"], view["pull_seconds"]) == (result.queued_seconds, result.pull_seconds)
    assert view["run_seconds"] == result.duration_seconds

    rows = dict(line.split(None, 1) for line in shown.splitlines() if line.strip())
    assert rows["queued"].strip().endswith("s") and rows["pulling"].strip() != "-" and rows["running"].strip() != "-"
