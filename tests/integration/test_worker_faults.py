"""Faults survived: a worker SIGKILLed mid-execution, orphan containers, shutdown while pulling.

Real ``dockrq-worker`` processes, real Redis, real dockerd. Workers run with
short heartbeat/reap settings (seconds instead of tens of seconds) so each
scenario ends quickly; the rules are the same as with the defaults.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from scripts.faults import FAST_REAP_ENV
from schemas.compact_log import log_batches
from schemas import ExecutionStatus, Keys, LogBatch
from polling import wait_until

pytestmark = pytest.mark.integration

FAST = FAST_REAP_ENV  # dead workers noticed in seconds


@pytest.fixture
def other_node(spawn_worker, docker_client):
    """Spawn a worker with another executor id on the same daemon (a second node's worker)."""
    ids = []

    def spawn(**kw):
        node = f"{spawn_worker.executor_id}-b{len(ids)}"
        ids.append(node)
        return spawn_worker("--executor-id", node, env=FAST, **kw)

    yield spawn
    for node in ids:
        for c in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={node}"}):
            c.remove(force=True)


def _request(unique, name, *cmd, **fields):
    return {
        "execution_id": f"{name}-{unique}",
        "engine": {"image": "dockrq-test/busybox:latest", "cmd": list(cmd)},
        **fields,
    }


def _containers(docker_client, execution_id):
    return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={execution_id}"})


def _replay(redis_client, prefix, execution_id) -> list[LogBatch]:
    # the stream, or the compact log that replaced it once the log ended (issue 14)
    return log_batches(redis_client, Keys(prefix).log_stream(execution_id), Keys(prefix).log_compact(execution_id))


def _rq_status(redis_client, execution_id) -> str:
    return Job.fetch(execution_id, connection=redis_client, serializer=JSONSerializer).get_status(refresh=True).value


def _meta(redis_client, execution_id) -> dict:
    return Job.fetch(execution_id, connection=redis_client, serializer=JSONSerializer).get_meta(refresh=True)


def _started_ids(redis_client, queue):
    return StartedJobRegistry(queue, connection=redis_client).get_job_ids(cleanup=False)


# -- SIGKILL mid-execution, same node: the restarted worker adopts ---------------------------------


def test_restarted_worker_adopts_the_running_container(
    spawn_worker, producer, redis_client, docker_client, unique
):
    first = spawn_worker(env=FAST)
    script = "for i in $(seq 1 12); do echo line $i; echo err $i >&2; sleep 0.4; done; exit 7"
    eid = producer.submit(_request(unique, "adopt", "sh", "-c", script))
    followed: list[tuple[str, str]] = []
    follower = threading.Thread(
        target=lambda: followed.extend((e.stream, e.data) for e in producer.logs(eid, follow=True)), daemon=True
    )
    follower.start()
    wait_until(lambda: sum(len(b.entries) for b in _replay(redis_client, spawn_worker.prefix, eid)) >= 4, 20, "first logs")
    (container,) = _containers(docker_client, eid)

    first.kill()  # SIGKILL: no outcome, no cleanup, the container keeps running
    container.reload()
    assert container.status == "running"
    assert _rq_status(redis_client, eid) == "started"
    second = spawn_worker(env=FAST)

    got = producer.wait(eid, timeout=40)
    follower.join(10)
    assert (got.status, got.exit_code) == (ExecutionStatus.FAILED, 7)
    assert got.result.container_id == container.id  # followed, never started twice
    assert got.result.stdout == "".join(f"line {i}\n" for i in range(1, 13))
    assert got.result.stderr == "".join(f"err {i}\n" for i in range(1, 13))
    # The log stream continues where the dead worker stopped: no gap, no duplicate.
    batches = _replay(redis_client, spawn_worker.prefix, eid)
    entries = [(e.stream, e.data) for b in batches for e in b.entries]
    assert "".join(d for s, d in entries if s == "stdout") == got.result.stdout
    assert "".join(d for s, d in entries if s == "stderr") == got.result.stderr
    seqs = [b.seq for b in batches]
    assert seqs == [sum(len(b.entries) for b in batches[:i]) for i in range(len(batches))]
    assert batches[-1].eof and sum(1 for b in batches if b.eof) == 1
    assert followed == entries
    # rq agrees (once the adopter has settled the job): finished, nothing left to call abandoned.
    wait_until(lambda: _rq_status(redis_client, eid) == JobStatus.FINISHED.value, 10, "rq job finished")
    assert eid not in _started_ids(redis_client, spawn_worker.queue)
    assert eid not in FailedJobRegistry(spawn_worker.queue, connection=redis_client).get_job_ids(cleanup=False)
    assert "adopting container" in second.output()
    assert not _containers(docker_client, eid)
    # The adopter still serves its queue.
    after = producer.submit(_request(unique, "after-adopt", "echo", "ok"))
    assert producer.wait(after, timeout=30).status == ExecutionStatus.SUCCEEDED


# -- SIGKILL mid-execution, another node's reaper --------------------------------------------------


def test_reaper_stops_the_container_and_writes_lost(spawn_worker, other_node, producer, redis_client, docker_client, unique):
    # Two nodes on one daemon, started at once: whichever runs the execution is killed; the other
    # shares the daemon, not the executor id: it must not adopt, it reaps.
    workers = [spawn_worker(env=FAST, ready=False), other_node(ready=False)]
    spawn_worker.ready(2, workers)
    eid = producer.submit(_request(unique, "lost", "sleep", "300"))
    wait_until(lambda: producer.status(eid).state == "running", 20, "running")

    spawn_worker.runner(eid, workers).kill()
    # Left alone the container sleeps 300 s and nobody writes an outcome: one within a minute
    # saying the worker was lost is the other node's reaper at work.
    got = producer.wait(eid, timeout=60)
    assert (got.status, got.error.code) == (ExecutionStatus.LOST, "worker_lost")
    assert "died while running" in got.error.message
    wait_until(lambda: not _containers(docker_client, eid), 30, "container removed")
    wait_until(lambda: _rq_status(redis_client, eid) == JobStatus.FAILED.value, 30, "rq job failed")
    assert eid not in _started_ids(redis_client, spawn_worker.queue)
    assert redis_client.llen(Keys(spawn_worker.prefix).outcome(eid)) == 1


def test_reaper_reenqueues_when_the_request_allows_retries(
    spawn_worker, other_node, producer, redis_client, docker_client, unique
):
    workers = [spawn_worker(env=FAST, ready=False), other_node(ready=False)]  # as above: one dies, one reaps
    spawn_worker.ready(2, workers)
    # Still running when its worker is killed (right after it is seen running), a few seconds of margin.
    eid = producer.submit(_request(unique, "retry", "sh", "-c", "sleep 5; echo finished", retries=1))
    wait_until(lambda: producer.status(eid).state == "running" and _containers(docker_client, eid), 20, "running")
    (first_container,) = _containers(docker_client, eid)
    doomed = spawn_worker.runner(eid, workers)

    doomed.kill()
    got = producer.wait(eid, timeout=60)
    assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "finished\n")
    assert got.result.container_id != first_container.id  # a second, fresh run
    wait_until(lambda: _rq_status(redis_client, eid) == JobStatus.FINISHED.value, 10, "rq job finished")
    meta = _meta(redis_client, eid)
    assert meta["attempts"] == 2 and meta["lost_worker"].startswith(spawn_worker.executor_id)
    assert f".{doomed.pid}." in meta["lost_worker"]
    assert not _containers(docker_client, eid)


def test_reaper_writes_lost_once_retries_are_used_up(
    spawn_worker, other_node, producer, redis_client, docker_client, unique
):
    # Three nodes on one daemon (executor ids of their own), started at once.
    workers = [spawn_worker(env=FAST, ready=False), other_node(ready=False), other_node(ready=False)]
    spawn_worker.ready(3, workers)
    eid = producer.submit(_request(unique, "twice", "sleep", "300", retries=1))
    wait_until(lambda: producer.status(eid).state == "running", 20, "running")
    doomed = spawn_worker.runner(eid, workers)
    doomed.kill()  # a survivor reaps it and puts it back on the queue, and one of them runs the retry...
    wait_until(lambda: (_meta(redis_client, eid).get("attempts") == 2
                   and producer.status(eid).state == "running"), 40, "second attempt running")
    second = spawn_worker.runner(eid, workers)
    assert second is not doomed
    second.kill()  # ...and dies too: no retry left
    (third,) = [w for w in workers if w not in (doomed, second)]
    got = producer.wait(eid, timeout=40)
    assert (got.status, got.error.code) == (ExecutionStatus.LOST, "worker_lost")
    wait_until(lambda: not _containers(docker_client, eid), 10, "container removed")
    wait_until(lambda: _rq_status(redis_client, eid) == JobStatus.FAILED.value, 10, "rq job failed")
    assert third.popen.poll() is None


# -- orphan containers -------------------------------------------------------------------------------


def test_orphan_sweep_removes_unowned_containers_and_spares_owned_ones(
    spawn_worker, other_node, producer, redis_client, docker_client, test_image, unique
):
    owner = spawn_worker(env=FAST)
    running = producer.submit(_request(unique, "owned", "sleep", "300"))
    wait_until(lambda: producer.status(running).state == "running", 20, "running")
    keys = Keys(spawn_worker.prefix)

    def orphan(execution_id, executor):
        return docker_client.containers.run(
            test_image, ["sleep", "300"], detach=True,
            labels={"dockrq.executor": executor, "dockrq.execution": execution_id, "dockrq.created": f"{time.time():.3f}"},
        )

    # An execution that has ended (its outcome is written) but whose container was left behind.
    ended = f"ended-{unique}"
    redis_client.rpush(keys.outcome(ended), '{"execution_id": "%s", "status": "succeeded"}' % ended)
    redis_client.expire(keys.outcome(ended), 600)
    leftover = orphan(ended, "gone-node")
    # A container no one in this Redis knows about: another deployment's, left alone.
    stranger = orphan(f"stranger-{unique}", "elsewhere")
    try:
        sweeper = other_node()
        wait_until(lambda: not _containers(docker_client, ended), 20, "leftover container removed")
        time.sleep(2)  # several more passes
        stranger.reload()
        assert stranger.status == "running"
        (owned,) = _containers(docker_client, running)
        assert owned.status == "running"
        swept = owner.output() + sweeper.output()  # every worker's reaper sweeps its daemon
        assert f"removing orphan container {leftover.id[:12]}" in swept
    finally:
        stranger.remove(force=True)
        producer.cancel(running)
    assert producer.wait(running, timeout=20).status == ExecutionStatus.CANCELLED
    assert owner.popen.poll() is None


# -- shutdown while the image is still being pulled -----------------------------------------------


@pytest.fixture
def silent_registry():
    """A 'registry' that accepts connections and never answers: a pull that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    server.close()


def test_second_sigterm_while_pulling_writes_outcome_and_leaves_nothing(
    spawn_worker, producer, redis_client, docker_client, silent_registry, unique
):
    worker = spawn_worker(env=FAST)
    request = _request(unique, "pulling", "true")
    request["engine"]["image"] = f"{silent_registry}/dockrq-test/never:latest"
    eid = producer.submit(request)
    wait_until(lambda: producer.status(eid).state == "pulling", 20, "pulling")
    worker.signal(signal.SIGTERM)
    time.sleep(1.5)  # rq ignores a second signal within 1 s of the first
    assert worker.popen.poll() is None  # warm shutdown waits for the execution
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) is not None
    got = producer.wait(eid, timeout=1)
    assert (got.status, got.error.code) == (ExecutionStatus.CANCELLED, "worker_shutdown")
    assert not _containers(docker_client, eid)
    assert _rq_status(redis_client, eid) == JobStatus.FAILED.value


def test_shutdown_of_an_adopter_ends_what_it_adopted(spawn_worker, producer, redis_client, docker_client, unique):
    first = spawn_worker(env=FAST)
    finishing = producer.submit(_request(unique, "adopted-finish", "sh", "-c", "sleep 8; echo done"))
    stuck = producer.submit(_request(unique, "adopted-stuck", "sleep", "300"))
    second = spawn_worker(env=FAST)  # takes the second execution while the first worker has the first
    wait_until(lambda: all(producer.status(e).state == "running" and producer.status(e).container_id
                      for e in (finishing, stuck)), 20, "both running")  # announced by their workers, not only rq
    owners = {_meta(redis_client, e)["worker"] for e in (finishing, stuck)}
    assert len(owners) == 2
    first.kill()
    second.kill()
    adopter = spawn_worker(env=FAST)  # same executor id: adopts both
    wait_until(lambda: adopter.output().count("adopting container") == 2, 20, "both adopted")

    adopter.signal(signal.SIGTERM)  # warm: the adopted executions are its current work
    time.sleep(1.5)
    assert adopter.popen.poll() is None
    assert producer.wait(finishing, timeout=20).result.stdout == "done\n"  # ran to its end meanwhile
    assert adopter.popen.poll() is None  # still waiting for the other one
    adopter.signal(signal.SIGTERM)  # cold: stop it, write its outcome, exit
    adopter.wait(30)
    got = producer.wait(stuck, timeout=1)
    assert (got.status, got.error.code) == (ExecutionStatus.CANCELLED, "worker_shutdown")
    assert not _containers(docker_client, stuck) and not _containers(docker_client, finishing)
    assert _rq_status(redis_client, finishing) == JobStatus.FINISHED.value
    assert _rq_status(redis_client, stuck) in (JobStatus.FINISHED.value, JobStatus.FAILED.value)
    assert stuck not in _started_ids(redis_client, spawn_worker.queue)


def test_a_job_dequeued_by_a_worker_that_died_before_starting_it_runs(spawn_worker, producer, redis_client, unique):
    eid = producer.submit(_request(unique, "stuck", "echo", "ran"))
    queue = producer.rq_queue()
    # What a worker killed between rq's BLMOVE and the job's start leaves: the id in the intermediate list only.
    assert redis_client.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT") == eid.encode()
    worker = spawn_worker(env=FAST)
    got = producer.wait(eid, timeout=30)
    assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "ran\n")
    assert "died before starting it; re-enqueued" in worker.output()
    assert redis_client.lrange(queue.intermediate_queue_key, 0, -1) == []


def test_a_job_rq_failed_without_an_outcome_gets_a_lost_one(spawn_worker, producer, redis_client, unique):
    eid = producer.submit(_request(unique, "abandoned", "echo", "never"))
    queue = producer.rq_queue()
    job = queue.fetch_job(eid)
    # What rq's own abandoned/stuck-job cleanup does when it gets there first: FAILED, no outcome.
    queue.remove(job)
    with redis_client.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        queue.failed_job_registry.add(job, exc_string="AbandonedJobError", pipeline=pipe)
        pipe.execute()
    spawn_worker(env=FAST)
    got = producer.wait(eid, timeout=20)
    assert (got.status, got.error.code) == (ExecutionStatus.LOST, "worker_lost")
    assert "no outcome was written" in got.error.message


def test_a_sigkilled_workers_scheduler_ends_and_frees_the_scheduler_lock(spawn_worker, redis_client):
    """rq forks its scheduler from the worker; SIGKILL of the worker alone once left it running as
    an orphan holding the scheduler lock, so no replacement worker could schedule anything."""
    import psutil
    from rq.scheduler import RQScheduler

    worker = spawn_worker(env=FAST)
    lock = RQScheduler.get_locking_key(spawn_worker.queue)
    wait_until(lambda: psutil.Process(worker.popen.pid).children() and redis_client.exists(lock), 30, "scheduler up")
    (scheduler,) = psutil.Process(worker.popen.pid).children()
    os.kill(worker.popen.pid, signal.SIGKILL)  # the worker only, not its process group
    worker.popen.wait(10)
    wait_until(lambda: not scheduler.is_running() or scheduler.status() == psutil.STATUS_ZOMBIE, 60, "scheduler ended")
    wait_until(lambda: not redis_client.exists(lock), 30, "scheduler lock released")
