"""Prometheus metrics and JSON logs of real dockrq-worker processes.

A real Prometheus server (Debian's ``prometheus``) on loopback scrapes a worker
and the series are read back through Prometheus's HTTP API; ``promtool check
metrics`` lints the exposition; a ``--pool 2`` worker is one target; with
``DOCKRQ_LOG_FORMAT=json`` every line is a JSON object carrying the execution id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_executions(producer, test_image: str) -> dict[str, str]:
    ids = {
        "ok1": producer.submit({"engine": {"image": test_image, "cmd": ["true"]}}),
        "ok2": producer.submit({"engine": {"image": test_image, "cmd": ["echo", "hi"]}}),
        "bad": producer.submit({"engine": {"image": test_image, "cmd": ["sh", "-c", "exit 3"]}}),
        "slow": producer.submit({"engine": {"image": test_image, "cmd": ["sleep", "30"]}, "timeout_seconds": 0.5}),
    }
    got = {name: producer.wait(eid, timeout=60).status.value for name, eid in ids.items()}
    assert got == {"ok1": "succeeded", "ok2": "succeeded", "bad": "failed", "slow": "timed_out"}
    return ids


@pytest.fixture
def prometheus(tmp_path):
    """``start(target_port)`` runs a Prometheus server on 127.0.0.1 scraping that port every second;
    returns ``query(promql) -> {labels-tuple: value}``. Stopped and its storage removed at teardown."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is needed (run scripts/setup.sh)")
    procs: list[subprocess.Popen] = []

    def start(target_port: int):
        port = free_port()
        while port == target_port:  # the target may not listen yet
            port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: dockrq\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("prometheus did not come up:\n" + (tmp_path / "prometheus.log").read_text())
                time.sleep(0.2)

        def query(promql: str) -> dict[tuple[tuple[str, str], ...], float]:
            url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            body = json.loads(urllib.request.urlopen(url, timeout=10).read())
            assert body["status"] == "success", body
            return {
                tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("instance", "job", "__name__"))): float(r["value"][1])
                for r in body["data"]["result"]
            }

        return query

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_prometheus_scrapes_a_worker_and_sees_its_executions(spawn_worker, producer, prometheus, test_image, tmp_path):
    port = free_port()
    worker = spawn_worker("--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--queue-metrics", ready=False)
    query = prometheus(port)  # Prometheus and the worker start at the same time
    spawn_worker.ready(1, [worker])
    run_executions(producer, test_image)

    exposition = scrape(port)
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # What the worker exposes...
    s = samples(exposition)
    assert s[("dockrq_executions_ended_total", (("status", "succeeded"),))] == 2
    assert s[("dockrq_executions_started_total", ())] == 4

    # ... and what Prometheus stored from scraping it.
    q = spawn_worker.queue
    want = {
        'dockrq_executions_ended_total{status="succeeded"}': 2,
        'dockrq_executions_ended_total{status="failed"}': 1,
        'dockrq_executions_ended_total{status="timed_out"}': 1,
        'dockrq_executions_ended_total{status="lost"}': 0,
        "dockrq_executions_started_total": 4,
        "sum(dockrq_execution_run_seconds_count)": 4,
        'dockrq_execution_run_seconds_count{status="timed_out"}': 1,
        "dockrq_execution_queue_wait_seconds_count": 4,
        "dockrq_image_pull_seconds_count": 0,  # the test image is present: nothing pulled
        "dockrq_executions_running": 0,
        "dockrq_outcome_write_retries_total": 0,
        'dockrq_reaper_actions_total{action="lost"}': 0,
        f'dockrq_queue_jobs{{queue="{q}",state="queued"}}': 0,
        f'dockrq_queue_outcomes{{queue="{q}",status="succeeded"}}': 2,
        f'dockrq_queue_outcomes{{queue="{q}",status="failed"}}': 1,
        "dockrq_redis_up": 1,
        'up{job="dockrq"}': 1,
    }
    deadline = time.monotonic() + 60
    while True:
        got = {promql: [*query(promql).values()] for promql in want}
        if all(got[promql] == [value] for promql, value in want.items()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never saw the expected series; last answers: {got}\n"
                        + (tmp_path / "prometheus.log").read_text()[-2000:])
        time.sleep(0.5)
    # A histogram's buckets are cumulative and end at +Inf with the count.
    buckets = query(f'dockrq_execution_run_seconds_bucket{{status="succeeded"}}')
    assert buckets[(("le", "+Inf"), ("status", "succeeded"))] == 2


def test_a_pool_is_one_target_summing_its_workers(spawn_worker, producer, test_image):
    port = free_port()
    pool = spawn_worker("--pool", "2", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    run_executions(producer, test_image)
    s = samples(scrape(port))
    assert s[("dockrq_executions_ended_total", (("status", "succeeded"),))] == 2
    assert s[("dockrq_executions_ended_total", (("status", "timed_out"),))] == 1
    assert s[("dockrq_executions_started_total", ())] == 4
    deadline = time.monotonic() + 20  # the gauge drops just after the outcome is written
    while s[("dockrq_executions_running", ())] != 0:
        assert time.monotonic() < deadline, s[("dockrq_executions_running", ())]
        time.sleep(0.2)
        s = samples(scrape(port))
    assert ("dockrq_queue_jobs", (("queue", spawn_worker.queue), ("state", "queued"))) not in s  # not asked for
    pool.signal(signal.SIGTERM)
    assert pool.wait(30) == 0


def test_dockrq_worker_metrics_reports_queue_depth_alone(spawn_worker, redis_url, test_image, tmp_path):
    from producer import Producer

    port = free_port()
    with Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as p:
        for _ in range(3):  # no worker: they stay queued
            p.submit({"engine": {"image": test_image, "cmd": ["true"]}})
    exporter = subprocess.Popen(
        [str(Path(sys.executable).with_name("dockrq-worker")), "metrics", "--redis-url", redis_url,
         "--prefix", spawn_worker.prefix, "-q", spawn_worker.queue, "--metrics-port", str(port),
         "--metrics-addr", "127.0.0.1"],
        stdout=open(tmp_path / "exporter.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                text = scrape(port)
                break
            except (urllib.error.URLError, ConnectionError):
                assert exporter.poll() is None and time.monotonic() < deadline, (tmp_path / "exporter.log").read_text()
                time.sleep(0.1)
        s = samples(text)
        assert s[("dockrq_queue_jobs", (("queue", spawn_worker.queue), ("state", "queued")))] == 3
        assert s[("dockrq_redis_up", ())] == 1
        assert not any(name.startswith("dockrq_executions_ended_total") for name, _ in s)  # no worker instruments
    finally:
        os.killpg(exporter.pid, signal.SIGTERM)
        assert exporter.wait(10) == 0


def test_json_logs_carry_the_execution_id(spawn_worker, producer, test_image):
    worker = spawn_worker(env={"DOCKRQ_LOG_FORMAT": "json"})
    ok = producer.submit({"engine": {"image": test_image, "cmd": ["true"]}})
    bad = producer.submit({"engine": {"image": test_image, "cmd": ["sh", "-c", "exit 3"]}})
    assert producer.wait(ok, timeout=60).status.value == "succeeded"
    assert producer.wait(bad, timeout=60).status.value == "failed"
    worker.signal(signal.SIGTERM)
    worker.wait(30)
    lines = [line for line in worker.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"ts", "level", "logger", "message", "execution_id"} <= r.keys() for r in records)
    for eid in (ok, bad):
        about = [r for r in records if eid in r["message"]]
        assert about, f"no line about {eid}"
        assert all(r["execution_id"] == eid for r in about), about
    ended = [r for r in records if r["execution_id"] == bad and "failed (exit 3)" in r["message"]]
    assert ended and ended[0]["logger"] == "worker.execution.run"


def test_image_pull_seconds_observes_real_pulls(spawn_worker, producer, registry, registry_images, unique):
    """dockrq_image_pull_seconds observes each execution's pull from the loopback registry (its
    ``result.pull_seconds``), a failed pull too; an execution whose image is present adds none."""
    port = free_port()
    worker = spawn_worker("--metrics-port", str(port), "--metrics-addr", "127.0.0.1", ready=False)
    image, _ = registry_images(registry, files={"/version": b"one\n"})  # while the worker starts
    spawn_worker.ready(1, [worker])

    def run(ref: str):
        eid = producer.submit({"engine": {"image": ref, "cmd": ["cat", "/version"]}, "pull_policy": "if_not_present"})
        return producer.wait(eid, timeout=60)

    pulled, present = run(image), run(image)
    missing = run(f"{registry}/t-{unique}/missing:v1")  # the registry answers: no such manifest
    assert (pulled.status.value, pulled.result.stdout) == ("succeeded", "one\n"), pulled
    assert pulled.result.pull_seconds and present.result.pull_seconds is None
    assert (missing.status.value, missing.error.code) == ("error", "image_pull"), missing
    assert missing.result.pull_seconds is not None

    s = samples(scrape(port))
    assert s[("dockrq_image_pull_seconds_count", ())] == 2
    assert s[("dockrq_image_pull_seconds_sum", ())] == pytest.approx(
        pulled.result.pull_seconds + missing.result.pull_seconds, rel=1e-6
    )
    assert s[("dockrq_executions_ended_total", (("status", "error"),))] == 1
