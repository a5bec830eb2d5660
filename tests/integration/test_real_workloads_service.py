"""Issue 10, failing inputs from real workloads, end to end: dockrq-worker processes, the
real Redis and dockerd, the Producer and the ``dockrq`` CLI as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from producer import InvalidRequest, Producer
from scripts.faults import FAST_REAP_ENV
from schemas import ExecutionStatus, Keys

from dockrq_cli import at_once

pytestmark = pytest.mark.integration

CHILD_OOM = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?; exit 0"


def _request(unique, name, *cmd, **fields):
    return {"execution_id": f"{name}-{unique}", "engine": {"image": "dockrq-test/busybox:latest", "cmd": list(cmd)}, **fields}


def _until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def dockrq(redis_url, spawn_worker):
    """Run the installed ``dockrq`` CLI (bytes arguments allowed) on the test's queue and prefix."""
    entry = Path(sys.executable).with_name("dockrq")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "producer.cli"]
    env = {**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_PREFIX": spawn_worker.prefix,
           "DOCKRQ_QUEUE": spawn_worker.queue}

    def run(*args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, env=env, timeout=timeout)

    return run


def _container(docker_client, execution_id):
    found = docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={execution_id}"})
    return found[0] if found else None


def _running_container(producer, docker_client, execution_id):
    """The execution's container once it runs (rq says "running" as soon as the job is taken,
    before the container exists)."""
    _until(lambda: producer.status(execution_id).state == "running", 30, "running")
    _until(lambda: (c := _container(docker_client, execution_id)) is not None and c.status == "running", 30, "container")
    return _container(docker_client, execution_id)


# -- 1 ------------------------------------------------------------------------------------------


def test_child_oom_kill_submit_exits_0_and_outcome_succeeded(spawn_worker, producer, dockrq, unique):
    spawn_worker()
    eid = f"child-oom-{unique}"
    run = dockrq("submit", "--id", eid, "--memory", "32m", "dockrq-test/busybox:latest", "sh", "-c", CHILD_OOM)
    assert run.returncode == 0, run.stderr
    assert run.stdout == b"dd=137\n"
    assert b"OOM killer acted" in run.stderr and b"Traceback" not in run.stderr
    outcome = producer.wait(eid, timeout=10)
    assert (outcome.status, outcome.exit_code) == (ExecutionStatus.SUCCEEDED, 0)
    assert outcome.result.oom_killed is False and outcome.result.oom_kills >= 1
    assert b"oom kills" in dockrq("status", eid).stdout


# -- 2 ------------------------------------------------------------------------------------------


def test_logs_tail_counts_lines_of_the_combined_output(spawn_worker, producer, dockrq, unique):
    # chunked every which way: lines split over entries, two streams, an unfinished last line
    script = "echo a; echo b >&2; printf 'c'; sleep 0.3; printf 'd\\n'; sleep 0.3; echo e >&2; sleep 0.3; printf f"
    eid = producer.submit(_request(unique, "seq", "seq", "1", "10"))
    mixed = producer.submit(_request(unique, "mixed", "sh", "-c", script))
    spawn_worker()
    producer.wait(eid, timeout=60)
    producer.wait(mixed, timeout=60)
    # reads of ended logs, run at the same time
    two, three, tail = at_once(
        partial(dockrq, "logs", "--tail", "2", eid), partial(dockrq, "logs", "-n", "3", eid),
        partial(dockrq, "logs", "--tail", "3", mixed),
    )
    assert two.stdout == b"9\n10\n"
    assert three.stdout == b"8\n9\n10\n"
    assert "".join(e.data for e in producer.logs(eid, tail=2, follow=False)) == "9\n10\n"
    entries = list(producer.logs(mixed, tail=3, follow=False))
    assert [(e.stream, e.data) for e in entries] == [("stdout", "c"), ("stdout", "d\n"), ("stderr", "e\n"), ("stdout", "f")]
    assert (tail.stdout, tail.stderr) == (b"cd\nf", b"e\n")


# -- 3 ------------------------------------------------------------------------------------------


def test_non_utf8_argument_is_refused_in_one_line(spawn_worker, dockrq, redis_client, unique):
    before = redis_client.llen(f"rq:queue:{spawn_worker.queue}")
    fields = [
        (["-e", b"K=\xff", "dockrq-test/busybox:latest"], b"engine.env.K"),
        (["-w", b"/d\xe9", "dockrq-test/busybox:latest"], b"engine.working_dir"),
        (["--queue", b"q\xe9", "dockrq-test/busybox:latest"], b"queue"),
        ([b"busybox\xe9"], b"engine.image"),
    ]
    # every one is refused before anything is written: they run at the same time
    run, *others = at_once(
        partial(dockrq, "submit", "--id", f"bad-{unique}", "dockrq-test/busybox:latest", "echo", b"caf\xe9"),
        *(partial(dockrq, "submit", *args) for args, _ in fields),
    )
    assert run.returncode == 125
    assert run.stderr.count(b"\n") == 1 and b"Traceback" not in run.stderr
    assert b"engine.cmd.1: not valid UTF-8 (byte 0xe9" in run.stderr
    assert redis_client.llen(f"rq:queue:{spawn_worker.queue}") == before
    assert not redis_client.exists(Keys(spawn_worker.prefix).claim(f"bad-{unique}"))
    for (args, field), run in zip(fields, others, strict=True):
        assert (run.returncode, run.stderr.count(b"\n")) == (125, 1), run.stderr
        assert field in run.stderr and b"Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"engine": {"image": "dockrq-test/busybox:latest", "cmd": ["echo", "caf\udce9"]}}, "engine.cmd.1"),
        ({"engine": {"image": "dockrq-test/busybox:latest", "entrypoint": ["\ud800"]}}, "engine.entrypoint.0"),
        ({"engine": {"image": "dockrq-test/busybox:latest", "env": {"K": "v\udcff"}}}, "engine.env.K"),
        ({"engine": {"image": "dockrq-test/busybox:latest", "env": {"K\udcff": "v"}}}, "engine.env.K\\udcff"),
        ({"engine": {"image": "dockrq-test/busybox:latest"}, "mounts": [{"source": "/s\udce9", "target": "/t"}]},
         "mounts.0.source"),
        ({"engine": {"image": "dockrq-test/busybox:latest"}, "job_id": "j\udce9"}, "job_id"),
    ],
)
def test_producer_submit_refuses_unstorable_text_naming_the_field(producer, redis_client, fields, named):
    with pytest.raises(InvalidRequest) as refused:
        producer.submit(fields)
    assert str(refused.value).startswith(named + ":")
    with pytest.raises(InvalidRequest, match=r"^requests\[1\]: "):
        producer.submit_many([{"engine": {"image": "x"}}, fields])
    assert redis_client.llen(f"rq:queue:{producer.queue}") == 0


def test_producer_refuses_an_unstorable_queue_name(producer):
    with pytest.raises(InvalidRequest, match="^queue: not valid UTF-8"):
        producer.submit({"engine": {"image": "x"}}, queue="q\udce9")


def test_worker_rejects_escaped_surrogates_from_another_producer(spawn_worker, producer, redis_client, unique):
    # Another language's producer writes "\udce9" into the job's JSON: valid JSON, not valid text.
    spawn_worker()
    eid = f"foreign-{unique}"
    Queue(spawn_worker.queue, connection=redis_client, serializer=JSONSerializer).enqueue(
        "worker.jobs.execute", {"engine": {"image": "dockrq-test/busybox:latest", "cmd": ["echo", "\udce9"]}}, job_id=eid
    )
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.REJECTED
    assert outcome.error.message.startswith("engine.cmd.1: not valid UTF-8")


# -- 4 and 5: leftovers of a dead worker --------------------------------------------------------


def test_exited_leftover_of_a_dead_worker_is_read_at_once(spawn_worker, producer, redis_client, docker_client, unique):
    first = spawn_worker(env=FAST_REAP_ENV)
    eid = producer.submit(_request(unique, "exited", "sh", "-c", "echo a; sleep 1; echo b; exit 5"))
    container = _running_container(producer, docker_client, eid)
    first.kill()  # the worker dies; its container ends on its own afterwards
    container.wait(timeout=30)
    spawn_worker(env=FAST_REAP_ENV)
    outcome = producer.wait(eid, timeout=25)  # well before the 30 s an attach drain would take
    assert (outcome.status, outcome.exit_code, outcome.result.stdout) == (ExecutionStatus.FAILED, 5, "a\nb\n")
    assert outcome.result.container_id == container.id
    assert "".join(e.data for e in producer.logs(eid, follow=False)) == "a\nb\n"


def test_leftover_with_another_name_is_adopted_never_run_twice(spawn_worker, producer, docker_client, unique):
    first = spawn_worker(env=FAST_REAP_ENV)
    eid = producer.submit(_request(unique, "renamed", "sh", "-c", "hostname; sleep 3; echo end"))
    container = _running_container(producer, docker_client, eid)
    first.kill()
    container.rename(f"from-an-older-dockrq-{unique}")  # labels kept, name of another scheme
    adopter = spawn_worker(env=FAST_REAP_ENV)
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.result.container_id) == (ExecutionStatus.SUCCEEDED, container.id)
    assert outcome.result.stdout == f"{container.id[:12]}\nend\n"  # one container ran it: the leftover
    assert "adopting container" in adopter.output()
    assert _container(docker_client, eid) is None


# -- 6 ------------------------------------------------------------------------------------------


def test_ls_lists_every_queue_and_filters(producer, dockrq, redis_client, unique):
    # No worker takes these: they stay queued (one is cancelled) in two queues.
    here = producer.submit(_request(unique, "ls-here", "true"))
    other_queue = f"other-{unique}"
    there = producer.submit(_request(unique, "ls-there", "true"), queue=other_queue)
    gone = producer.submit(_request(unique, "ls-gone", "true"), queue=other_queue)
    producer.cancel(gone)
    try:
        # read-only listings, run at the same time
        everything, table, there_and_gone, cancelled, queued, here_only = at_once(
            partial(dockrq, "ls", "-q", "--limit", "1000"),
            partial(dockrq, "ls", "--limit", "1000"),
            partial(dockrq, "ls", "-q", "--queue", other_queue),
            partial(dockrq, "ls", "-q", "--queue", other_queue, "--status", "cancelled"),
            partial(dockrq, "ls", "-q", "--queue", other_queue, "--queue", producer.queue, "--status", "queued"),
            partial(dockrq, "--queue", producer.queue, "ls", "-q"),
        )
        assert {here, there, gone} <= set(everything.stdout.decode().split())
        table = table.stdout.decode()
        assert there in table and other_queue in table
        assert set(there_and_gone.stdout.decode().split()) == {there, gone}
        assert cancelled.stdout.decode().split() == [gone]
        assert set(queued.stdout.decode().split()) == {here, there}
        assert here_only.stdout.decode().split() == [here]
        assert [v.execution_id for v in producer.list_recent(10, [other_queue], states=["queued"])] == [there]
    finally:
        for eid in (here, there):
            producer.cancel(eid)
        redis_client.srem("rq:queues", f"rq:queue:{other_queue}")


# -- 7 ------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists("/dev/dri") or os.path.exists("/dev/kfd"), reason="this host has GPU device nodes")
def test_amd_gpu_on_a_host_without_one_ends_error_gpu_unavailable(spawn_worker, producer, unique):
    spawn_worker("--max-gpus", "none")
    eid = producer.submit(_request(unique, "amd", "true", resources={"gpus": {"vendor": "amd", "count": -1}}))
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.error.code) == (ExecutionStatus.ERROR, "gpu_unavailable")
    assert outcome.result is not None and outcome.result.error_code == "gpu_unavailable"


# -- 8 ------------------------------------------------------------------------------------------


def test_cancel_after_the_container_exited_keeps_succeeded(spawn_worker, producer, docker_client, unique):
    worker = spawn_worker()
    eid = producer.submit(_request(unique, "late-cancel", "sh", "-c", "sleep 1; echo done"))
    container = _running_container(producer, docker_client, eid)
    worker.signal(signal.SIGSTOP)  # the worker is busy elsewhere: it collects nothing meanwhile
    try:
        assert container.wait(timeout=30)["StatusCode"] == 0
        assert producer.cancel(eid) == "signalled"  # after the exit, before the result is collected
    finally:
        worker.signal(signal.SIGCONT)
    outcome = producer.wait(eid, timeout=30)
    assert (outcome.status, outcome.exit_code, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, 0, "done\n")


def test_cancel_that_stops_the_container_is_still_cancelled(spawn_worker, producer, unique):
    spawn_worker()
    eid = producer.submit(_request(unique, "stop-it", "sleep", "300"))
    _until(lambda: producer.status(eid).state == "running", 30, "running")
    threading.Thread(target=producer.cancel, args=(eid,)).start()
    assert producer.wait(eid, timeout=30).status == ExecutionStatus.CANCELLED
