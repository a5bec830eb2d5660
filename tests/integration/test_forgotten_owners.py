"""A container whose execution Redis forgot is left to its owner worker while that process lives.

Real redis-server (restarted empty: data lost) and the real dockerd; two workers on this host.
The forgotten-container sweep (worker.faults.forgotten) judges the owner named by the container's
owner labels (worker.faults.owner): alive on this host by its PID.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from producer import Producer
from scripts.faults import FAST_REAP_ENV, RedisServer
from worker.config.deployment import LABEL_DEPLOYMENT
from worker.executor import new_executor
from worker.faults.liveness import pid_namespace
from worker.faults.owner import LABEL_HOST, LABEL_PID, LABEL_PID_NS, LABEL_WORKER
from polling import wait_until

pytestmark = pytest.mark.integration


def _request(eid, *cmd):
    return {"execution_id": eid, "engine": {"image": "dockrq-test/busybox:latest", "cmd": list(cmd)}}


def test_forgotten_container_is_left_to_its_live_owner_and_removed_once_the_owner_is_dead(
    spawn_worker, tmp_path, unique, docker_client, test_image
):
    deployment = f"dep-{unique}"
    env = {**FAST_REAP_ENV, "DOCKRQ_DEPLOYMENT": deployment}
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this host that has ended: the owner of the control container
    ghost = new_executor(f"ghost-{unique}", stop_grace_seconds=0, labels={
        LABEL_DEPLOYMENT: deployment, LABEL_HOST: socket.gethostname(), LABEL_PID: str(gone.pid),
        LABEL_PID_NS: pid_namespace(), LABEL_WORKER: f"gone-{unique}",
    })
    server = RedisServer(tmp_path, durable=False)
    server.start()

    def containers(eid):
        return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})

    try:
        # Two workers, started at once: one runs the execution (its owner), the other stays idle and
        # its reaper sweeps the owner's container.
        workers = [spawn_worker(redis_url=server.url, env=env, ready=False) for _ in range(2)]
        spawn_worker.ready(2, workers, redis_url=server.url)
        with Producer(server.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer:
            eid = producer.submit(_request(f"owned-{unique}", "sleep", "120"))
            wait_until(lambda: producer.status(eid).state.value == "running", 60, "the execution to run")
        (container,) = containers(eid)
        labels = container.labels
        (owner,) = [w for w in workers if labels[LABEL_PID] == str(w.pid)]  # the owner label names one of them
        assert labels[LABEL_HOST] == socket.gethostname()
        assert labels[LABEL_WORKER] and labels[LABEL_DEPLOYMENT] == deployment

        server.kill()
        server.start()  # same port, empty: Redis forgot the execution, its rq job and every worker
        ghost.start(_request(f"ghost-{unique}", "sleep", "120"))  # forgotten too, its owner long dead
        # The sweeps run against the empty Redis past the orphan grace: the dead owner's is removed ...
        wait_until(lambda: not containers(f"ghost-{unique}"), 60, "the dead owner's forgotten container to go")
        time.sleep(4 * float(FAST_REAP_ENV["DOCKRQ_REAP_INTERVAL_SECONDS"]))  # ... and more passes
        # ... while the live owner's still runs: the other worker's reaper left it alone.
        assert [c.status for c in containers(eid)] == ["running"], "the live owner's container was removed"

        owner.kill()  # SIGKILL: now nobody runs it, and Redis knows nothing of it
        wait_until(lambda: not containers(eid), 60, "the dead owner's container to be removed by the other worker")
    finally:
        ghost.cleanup()
        ghost.close()
        server.kill()
