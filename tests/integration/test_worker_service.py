"""Real ``dockrq-worker`` processes, real Redis, real dockerd: the worker side of the wire contract."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.worker import Worker
from rq.serializers import JSONSerializer

from schemas.compact_log import log_batches
from schemas import CANCEL_MESSAGE, JOB_FUNCTION, Event, ExecutionStatus, Keys, LogBatch, Outcome

from dockrq_cli import at_once

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-value-never-logged"


@pytest.fixture
def wire(redis_client, spawn_worker, test_image, unique):
    return Wire(redis_client, spawn_worker.queue, Keys(spawn_worker.prefix), test_image, unique)


class Wire:
    """What a producer does, spoken directly in rq and Redis (independent of producer/).

    Tests name executions briefly; ``id(name)`` makes the real id unique to the
    test, since rq job ids share one keyspace whatever the dockrq prefix.
    """

    def __init__(self, redis, queue, keys, image, token):
        self.redis, self.keys, self.image, self.token = redis, keys, image, token
        self.queue = Queue(queue, connection=redis, serializer=JSONSerializer)

    def id(self, name: str) -> str:
        return f"{name}-{self.token}"

    def submit(self, name, *cmd, rq_timeout=-1, **fields):
        payload = {"engine": {"image": self.image, "cmd": list(cmd), "env": {"TOKEN": SECRET}}, **fields}
        return self.submit_raw(name, payload, rq_timeout=rq_timeout)

    def submit_raw(self, name, payload, rq_timeout=-1):
        eid = self.id(name)
        return self.queue.enqueue_call(
            JOB_FUNCTION, args=({"execution_id": eid, **payload},), job_id=eid, timeout=rq_timeout,
            description=f"docker run {self.image} ...", meta={"execution_id": eid, "status": "queued"},
        )

    def outcome(self, name, timeout=60.0) -> Outcome:
        key = self.keys.outcome(self.id(name))
        raw = self.redis.blmove(key, key, timeout, "RIGHT", "LEFT")
        assert raw is not None, f"no outcome for {name} within {timeout}s"
        return Outcome.model_validate_json(raw)

    def cancel(self, name):
        self.redis.set(self.keys.cancel_flag(self.id(name)), 1)
        self.redis.publish(self.keys.control_channel(self.id(name)), CANCEL_MESSAGE)

    def replay(self, name) -> list[LogBatch]:
        # the stream, or the compact log that replaced it once the log ended (issue 14)
        return log_batches(self.redis, self.keys.log_stream(self.id(name)), self.keys.log_compact(self.id(name)))

    def job(self, name) -> Job:
        return Job.fetch(self.id(name), connection=self.redis, serializer=JSONSerializer)

    def meta(self, name) -> dict:
        return self.job(name).get_meta(refresh=True)

    def wait_job(self, name, status, timeout=10.0):
        job = self.job(name)
        deadline = time.monotonic() + timeout
        while job.get_status(refresh=True) != status:
            assert time.monotonic() < deadline, f"rq job {name} is {job.get_status()}, not {status}"
            time.sleep(0.05)

    def wait_status(self, name, status, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.meta(name).get("status") != status:
            assert time.monotonic() < deadline, f"{name} never reached {status}: {self.meta(name)}"
            time.sleep(0.05)


def containers(docker_client, executor_id):
    return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={executor_id}"})


def test_submit_live_logs_outcome_events_meta(wire, spawn_worker, redis_client, docker_client):
    worker = spawn_worker()
    logs = redis_client.pubsub(ignore_subscribe_messages=True)
    logs.subscribe(wire.keys.logs_channel(wire.id("e2e")))
    events = redis_client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(wire.keys.events)
    time.sleep(0.1)

    wire.submit("e2e", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo oops >&2; exit 3")
    live: list[dict] = []
    deadline = time.monotonic() + 30
    while not (live and live[-1].get("eof")):
        assert time.monotonic() < deadline, live
        message = logs.get_message(timeout=1)
        if message:
            live.append(json.loads(message["data"]))

    got = wire.outcome("e2e")
    assert (got.status, got.exit_code) == (ExecutionStatus.FAILED, 3)
    assert got.result.stdout == "line 1\nline 2\nline 3\n" and got.result.stderr == "oops\n"
    entries = [(e["stream"], e["data"]) for batch in live for e in batch.get("entries", [])]
    assert entries == [("stdout", "line 1\n"), ("stdout", "line 2\n"), ("stdout", "line 3\n"), ("stderr", "oops\n")]
    assert [b["seq"] for b in live] == [sum(len(b.get("entries", [])) for b in live[:i]) for i in range(len(live))]
    assert [b.model_dump(exclude_defaults=True) for b in wire.replay("e2e")] == [
        LogBatch.model_validate(b).model_dump(exclude_defaults=True) for b in live
    ]
    seen = []
    deadline = time.monotonic() + 5
    while "failed" not in seen and time.monotonic() < deadline:
        if message := events.get_message(timeout=0.5):
            seen.append(Event.model_validate_json(message["data"]).status.value)
    assert seen == ["pulling", "running", "failed"]
    meta = wire.meta("e2e")
    assert meta["status"] == "failed" and meta["container_id"] == got.result.container_id
    assert meta["worker"].startswith(worker.executor_id)
    assert not containers(docker_client, worker.executor_id)
    assert SECRET not in worker.output()


def test_twenty_executions_over_two_workers_each_run_once(wire, spawn_worker, docker_client):
    workers = spawn_worker.many(2)
    ids = [f"many-{i}" for i in range(20)]
    for i, eid in enumerate(ids):
        wire.submit(eid, "sh", "-c", f"echo {i}; sleep 0.1")
    outcomes = {eid: wire.outcome(eid) for eid in ids}

    assert {eid: (o.status, o.result.stdout) for eid, o in outcomes.items()} == {
        eid: (ExecutionStatus.SUCCEEDED, f"{i}\n") for i, eid in enumerate(ids)
    }
    for eid in ids:
        assert wire.redis.llen(wire.keys.outcome(wire.id(eid))) == 1
        assert wire.job(eid).get_status() == JobStatus.FINISHED
    # rq ran each once: 20 successful jobs over the two workers (no rq results stream since issue 14)
    rq_workers = Worker.all(queue=Queue(spawn_worker.queue, connection=wire.redis))
    assert sum(w.successful_job_count for w in rq_workers) == len(ids)
    ran_on = {wire.meta(eid)["worker"] for eid in ids}
    assert len(ran_on) == 2, ran_on  # both workers took a share
    assert not containers(docker_client, workers[0].executor_id)


def test_cancel_running_execution_via_control_channel(wire, spawn_worker, docker_client):
    worker = spawn_worker(stop_grace=1)
    wire.submit("long", "sleep", "300")
    wire.wait_status("long", "running")
    # The control message alone, without the cancel flag a heartbeat would also find: left alone
    # the container sleeps 300 s, so a cancelled outcome within a minute came by the channel.
    wire.redis.publish(wire.keys.control_channel(wire.id("long")), CANCEL_MESSAGE)
    got = wire.outcome("long", timeout=60)
    assert (got.status, got.error.code, got.error.message) == (ExecutionStatus.CANCELLED, "cancelled", "cancelled by request")
    assert "cancel requested on the control channel" in worker.output()
    wire.wait_job("long", JobStatus.FINISHED)  # rq records the job after the outcome is out
    assert not containers(docker_client, worker.executor_id)


def test_rejected_request_reaches_no_container(wire, spawn_worker, docker_client):
    worker = spawn_worker()
    wire.submit_raw("bad", {"engine": {"image": wire.image}, "resources": {"memory": "lots"}})
    got = wire.outcome("bad")
    assert got.status == ExecutionStatus.REJECTED and got.error.code == "invalid_request"
    assert got.error.message.startswith("resources.memory")
    wire.submit("after-bad", "true")  # the worker is still serving
    assert wire.outcome("after-bad").status == ExecutionStatus.SUCCEEDED
    assert not containers(docker_client, worker.executor_id)


def test_rq_job_timeout_stops_the_container(wire, spawn_worker, docker_client):
    worker = spawn_worker()
    wire.submit("slow", "sleep", "300", rq_timeout=2)
    got = wire.outcome("slow", timeout=20)
    assert (got.status, got.error.code) == (ExecutionStatus.TIMED_OUT, "job_timeout")
    assert not containers(docker_client, worker.executor_id)


def test_sigterm_lets_the_current_execution_finish(wire, spawn_worker):
    worker = spawn_worker()
    wire.submit("finish-me", "sh", "-c", "sleep 1.5; echo done")
    wire.wait_status("finish-me", "running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    got = wire.outcome("finish-me", timeout=1)
    assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "done\n")


def test_second_sigterm_cancels_writes_outcome_and_exits(wire, spawn_worker, docker_client):
    worker = spawn_worker(stop_grace=1)
    wire.submit("stuck", "sleep", "300")
    wire.wait_status("stuck", "running")
    worker.signal(signal.SIGTERM)
    time.sleep(1.5)  # rq ignores a second signal within 1 s of the first
    assert worker.popen.poll() is None  # warm shutdown waits for the execution
    worker.signal(signal.SIGTERM)
    worker.wait(20)
    got = wire.outcome("stuck", timeout=1)
    assert (got.status, got.error.code) == (ExecutionStatus.CANCELLED, "worker_shutdown")
    assert not containers(docker_client, worker.executor_id)
    assert "interrupted (SystemExit); stopping its container" in worker.output()
    assert wire.job("stuck").get_status() == JobStatus.FAILED


def test_pool_runs_several_workers(wire, spawn_worker, docker_client):
    pool = spawn_worker("--pool", "2", ready=False)
    ids = [f"pool-{i}" for i in range(4)]
    for eid in ids:
        wire.submit(eid, "sleep", "0.5")
    assert all(wire.outcome(eid).status == ExecutionStatus.SUCCEEDED for eid in ids)
    pool.signal(signal.SIGTERM)
    pool.wait(30)
    assert not containers(docker_client, pool.executor_id)


def test_cleanup_removes_this_nodes_containers(spawn_worker, docker_client, test_image):
    node = spawn_worker.executor_id
    mine = docker_client.containers.run(test_image, ["sleep", "300"], detach=True, labels={"dockrq.executor": node})
    other = docker_client.containers.run(
        test_image, ["sleep", "300"], detach=True, labels={"dockrq.executor": f"{node}-other"}
    )
    try:
        out = _cli("cleanup", "--executor-id", node)
        assert out.returncode == 0, out.stderr
        assert f"removed 1 containers: {mine.id[:12]}" in out.stdout
        assert not containers(docker_client, node)
        other.reload()
        assert other.status == "running"
    finally:
        other.remove(force=True)


def test_doctor_says_what_is_wrong(redis_url, test_image):
    # two independent checks (the unreachable Redis is retried for seconds), run at the same time
    ok, bad = at_once(
        partial(_cli, "doctor", "--redis-url", redis_url, "--image", test_image),
        partial(_cli, "doctor", "--redis-url", "redis://127.0.0.1:1/0"),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [line.split()[:2] for line in ok.stdout.splitlines()] == [["ok", "redis"], ["ok", "docker"], ["ok", "container"]]
    assert bad.returncode == 1
    assert "FAIL  redis" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


def test_worker_refuses_to_start_without_redis():
    out = _cli("--redis-url", "redis://127.0.0.1:1/0", "--burst")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "redis" in out.stderr and "Traceback" not in out.stderr


def _cli(*args: str) -> subprocess.CompletedProcess:
    entry = Path(sys.executable).with_name("dockrq-worker")
    return subprocess.run([str(entry), *args], capture_output=True, text=True, timeout=120)


def test_worker_logs_never_show_env_values(wire, spawn_worker):
    worker = spawn_worker("--log-level", "DEBUG")
    wire.submit("quiet", "sh", "-c", "echo $TOKEN")
    assert wire.outcome("quiet").result.stdout == f"{SECRET}\n"  # it did reach the container
    worker.signal(signal.SIGTERM)
    worker.wait(20)
    assert SECRET not in worker.output()


def test_many_waiters_and_a_late_log_reader(wire, spawn_worker):
    spawn_worker()
    wire.submit("shared", "sh", "-c", "seq 1 2000")
    results: list[Outcome] = []
    waiters = [threading.Thread(target=lambda: results.append(wire.outcome("shared"))) for _ in range(3)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(60)
    assert [o.status for o in results] == [ExecutionStatus.SUCCEEDED] * 3
    batches = wire.replay("shared")
    text = "".join(e.data for b in batches for e in b.entries)
    assert text == "".join(f"{i}\n" for i in range(1, 2001))
    assert batches[-1].eof and batches[-1].seq == sum(len(b.entries) for b in batches[:-1])
