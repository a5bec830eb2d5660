"""worker.faults.owner: a container's owner labels and the verdict on its owner (fakeredis for the rq hash)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import timedelta

import fakeredis
from rq.utils import now, utcformat

from worker.faults.liveness import Liveness, pid_namespace, worker_key
from worker.faults.owner import (
    LABEL_HOST, LABEL_PID, LABEL_PID_NS, LABEL_WORKER, ContainerOwner, owner_alive, owner_labels,
)

REAP_AFTER = 5.0


def _liveness() -> Liveness:
    return Liveness(fakeredis.FakeRedis(), reap_after=REAP_AFTER, worker_name="the-reaper")


def _verdict(liveness: Liveness, labels: dict[str, str], created: float, *, uptime: float = 3600.0) -> bool:
    owner = ContainerOwner.from_labels(labels)
    states = liveness.states([owner.worker] if owner and owner.worker else [])
    return owner_alive(owner, created, liveness, states, lambda: (time.time(), uptime))


def test_owner_labels_name_this_process():
    labels = owner_labels("w1")
    assert labels[LABEL_WORKER] == "w1" and labels[LABEL_PID] == str(os.getpid())
    assert labels[LABEL_HOST] == socket.gethostname() and labels.get(LABEL_PID_NS, "") == pid_namespace()
    assert LABEL_WORKER not in owner_labels()
    assert ContainerOwner.from_labels({"dockrq.execution": "e"}) is None


def test_a_local_owner_is_judged_by_its_pid():
    liveness = _liveness()
    here = {LABEL_HOST: socket.gethostname(), LABEL_PID_NS: pid_namespace(), LABEL_WORKER: "w"}
    with subprocess.Popen(["sleep", "30"]) as alive:
        try:
            assert _verdict(liveness, {**here, LABEL_PID: str(alive.pid)}, time.time())
            # The same PID, but the process started after the container was created: a reused PID.
            assert not _verdict(liveness, {**here, LABEL_PID: str(alive.pid)}, time.time() - 3600)
        finally:
            alive.kill()
    assert not _verdict(liveness, {**here, LABEL_PID: str(alive.pid)}, time.time())  # gone (reaped)
    assert not _verdict(liveness, {**here, LABEL_PID: str(os.getpid())}, time.time())  # the reaper: not its run
    assert not _verdict(liveness, {}, time.time())  # no owner labels: nobody alive


def test_an_owner_elsewhere_is_judged_by_its_rq_heartbeat_as_the_orphan_sweep_does():
    liveness = _liveness()
    remote = {LABEL_HOST: "another-host", LABEL_PID: "1234", LABEL_PID_NS: pid_namespace(), LABEL_WORKER: "far"}
    created = time.time()
    assert not _verdict(liveness, remote, created)  # no rq worker hash: not known alive
    assert _verdict(liveness, remote, created, uptime=1.0)  # Redis just restarted: nobody judged dead yet
    stale = now() - timedelta(seconds=2 * REAP_AFTER)
    liveness.connection.hset(worker_key("far"), "last_heartbeat", utcformat(stale))
    assert not _verdict(liveness, remote, created)  # its heartbeat aged past reap_after
    liveness.connection.hset(worker_key("far"), "last_heartbeat", utcformat(now()))
    assert _verdict(liveness, remote, created)  # a fresh heartbeat (written again after a data loss)
    liveness.connection.hset(worker_key("far"), "death", utcformat(now()))
    assert not _verdict(liveness, remote, created)  # it registered its death

