"""A worker that takes an execution whose container another live worker of its node owns (or is
creating right now) leaves the execution to that worker: no outcome of its own, the rq job not
failed by it, the container untouched, one log line (worker.faults.contested).

Real redis-server and dockerd. The other worker is played by an executor in this test process
labelled as a worker would label it (owner labels naming this live process), or, for the race,
is a second real worker taking the same job id enqueued twice.
"""

from __future__ import annotations

import os
import socket

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from schemas import ExecutionRequest, ExecutionStatus
from worker.config.deployment import LABEL_DEPLOYMENT
from worker.executor import new_executor
from worker.executor.spec import build_container_spec
from worker.faults.liveness import pid_namespace
from worker.faults.owner import LABEL_HOST, LABEL_PID, LABEL_PID_NS, LABEL_WORKER
from scripts.faults import FAST_REAP_ENV
from polling import wait_until

pytestmark = pytest.mark.integration

STEPPED_BACK = "leaving the execution to it"


def _request(eid, image, *cmd):
    return {"execution_id": eid, "engine": {"image": image, "cmd": list(cmd)}}


def test_a_container_of_a_live_worker_is_left_to_it(spawn_worker, producer, redis_client, unique, test_image, docker_client):
    owner_name = f"owner-{unique}"
    owner = new_executor(spawn_worker.executor_id, stop_grace_seconds=0, labels={
        LABEL_DEPLOYMENT: "default", LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid()),
        LABEL_PID_NS: pid_namespace(), LABEL_WORKER: owner_name,
    })
    eid = f"contested-{unique}"
    try:
        # The other worker's container, as it makes it: same name (executor id + execution id),
        # dockrq's labels, owner labels naming a live process (this one).
        owner.start(_request(eid, test_image, "sleep", "60"))
        (container,) = docker_client.containers.list(all=True, filters={"label": f"dockrq.execution={eid}"})
        started_at = container.attrs["State"]["StartedAt"]

        worker = spawn_worker()
        producer.submit(_request(eid, test_image, "echo", "a second run"))
        wait_until(lambda: STEPPED_BACK in worker.output(), 30, "the worker stepping back")
        after = producer.submit(_request(f"after-{unique}", test_image, "echo", "ok"))
        assert producer.wait(after, timeout=30).status == ExecutionStatus.SUCCEEDED  # it serves on

        log = worker.output()
        assert log.count(STEPPED_BACK) == 1 and owner_name in log
        assert "Traceback" not in log and "container_create" not in log
        assert not redis_client.exists(f"{spawn_worker.prefix}:exec:{eid}:outcome")  # no outcome of its own
        job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.STARTED  # not failed (nor finished) by it
        assert job.worker_name == owner_name  # the reaper judges the owner, not the worker that stepped back
        assert job.get_meta()["worker"] == owner_name
        registry = Queue(spawn_worker.queue, connection=redis_client).started_job_registry
        assert registry.get_job_and_execution_ids() == []  # its rq execution is gone
        container.reload()  # untouched: the same container, still running, never restarted
        assert (container.status, container.attrs["State"]["StartedAt"]) == ("running", started_at)
        assert "a second run" not in container.logs().decode()
    finally:
        owner.cancel(eid, grace_seconds=0)
        owner.wait(eid).result(timeout=30)
        owner.close()


def test_the_same_job_taken_twice_runs_once(spawn_worker, producer, redis_client, unique, test_image):
    """The job id enqueued twice (a double enqueue, a requeue while it runs), two idle workers:
    both take it at once; the second meets the first's container (as Docker's 409 name conflict
    when the first is creating it at that moment) and steps back. One run, its outcome."""
    workers = spawn_worker.many(2)
    queue = Queue(spawn_worker.queue, connection=redis_client, serializer=JSONSerializer)
    eid = f"twice-{unique}"
    producer.submit(_request(eid, test_image, "sh", "-c", "sleep 2; echo done"))
    queue.push_job_id(eid)  # at once: both workers wait on the queue, each takes one entry
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "done\n")
    assert redis_client.llen(f"{spawn_worker.prefix}:exec:{eid}:outcome") == 1
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the rq job finished")
    wait_until(lambda: sum(STEPPED_BACK in w.output() for w in workers) == 1, 20, "the second worker stepping back")
    logs = "".join(w.output() for w in workers)
    assert logs.count(STEPPED_BACK) == 1
    assert "container_create" not in logs and "Traceback" not in logs


def test_a_name_conflict_on_create_leaves_the_container_alone(monkeypatch, unique, test_image, docker_client):
    """The create itself meets the other worker's container (Docker's 409: it was creating it
    while this start listed the execution's containers): the start raises ExecutionOwnedElsewhere,
    records nothing and neither starts nor removes that container."""
    from worker.executor import ExecutionNotFound, ExecutionOwnedElsewhere
    from worker.executor import handler as handler_module

    owner_name = f"owner-{unique}"
    labels = {LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid()), LABEL_WORKER: owner_name}
    other = new_executor(f"node-{unique}", labels=labels)
    ex = new_executor(f"node-{unique}")
    ex.owner_alive = lambda c: owner_name if c.labels.get(LABEL_WORKER) == owner_name else None
    eid = f"conflict-{unique}"
    request = _request(eid, test_image, "echo", "hi")
    try:
        spec = build_container_spec(ExecutionRequest.model_validate(request), other.executor_id, other.policy)
        spec.labels.update(labels)
        container_id, created = other.client.create(spec)  # made, not started: as the other worker is doing
        assert created
        monkeypatch.setattr(handler_module, "find_leftover", lambda client, labels: None)  # listed just before
        with pytest.raises(ExecutionOwnedElsewhere) as raised:
            ex.start(request)
        assert (raised.value.container_id, raised.value.owner, raised.value.state) == (container_id, owner_name, "created")
        with pytest.raises(ExecutionNotFound):
            ex.info(eid)  # nothing recorded
        container = docker_client.containers.get(container_id)
        assert container.status == "created"  # neither started nor removed
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": f"dockrq.execution={eid}"}):
            c.remove(force=True)
        ex.close()
        other.close()


def test_an_adopted_execution_taken_again_is_left_to_the_adopter(spawn_worker, producer, redis_client, unique, test_image):
    """The owner labels of an adopted execution's container still name the dead worker; the live
    one running it is the adopter (rq's execution record names it). A worker taking the job again
    (requeued while the adopter follows it) steps back in favour of the adopter."""
    first = spawn_worker(env=FAST_REAP_ENV)
    eid = producer.submit(_request(f"adopted-{unique}", test_image, "sh", "-c", "echo start; sleep 12; echo end"))
    wait_until(lambda: producer.status(eid).state == "running", 30, "the execution running")
    first.kill()  # SIGKILL: its container keeps running, labelled with this dead worker
    adopter = spawn_worker(env=FAST_REAP_ENV)
    wait_until(lambda: "adopting container" in adopter.output(), 20, "the adoption")
    # Taken again while adopted, by a worker of the same node (on a queue only it listens to, so that
    # the adopter, idle on the job's queue, does not take it first).
    late = spawn_worker("-q", f"late-{unique}", env=FAST_REAP_ENV)
    Queue(f"late-{unique}", connection=redis_client).push_job_id(eid)
    wait_until(lambda: STEPPED_BACK in late.output(), 20, "the late worker stepping back")
    outcome = producer.wait(eid, timeout=30)
    assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "start\nend\n")
    assert redis_client.llen(f"{spawn_worker.prefix}:exec:{eid}:outcome") == 1
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the rq job finished")
    logs = late.output() + adopter.output()
    assert logs.count(STEPPED_BACK) == 1 and "container_create" not in logs and "Traceback" not in logs
    stepped = next(line for line in late.output().splitlines() if STEPPED_BACK in line)
    assert f".{adopter.pid}." in stepped and f".{first.pid}." not in stepped  # the live runner named, not the dead one
    assert job.worker_name is not None and f".{adopter.pid}." in job.worker_name
