"""worker.faults.contested.owner_check: whether another live worker process owns a container
found for an execution (its owner labels, judged as the reaper judges them)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from worker.executor import OwnedContainer
from worker.faults.contested import owner_check
from worker.faults.liveness import pid_namespace
from worker.faults.owner import LABEL_HOST, LABEL_PID, LABEL_PID_NS, LABEL_WORKER


def _container(**labels: str) -> OwnedContainer:
    return OwnedContainer(id="c" * 64, execution_id="e1", executor_id="node", state="running", created=time.time(), labels=labels)


def _here(pid: int, worker: str) -> dict[str, str]:
    return {LABEL_HOST: socket.gethostname(), LABEL_PID: str(pid), LABEL_PID_NS: pid_namespace(), LABEL_WORKER: worker}


def test_a_live_process_of_this_host_owns_it(fake_redis):
    check = owner_check(fake_redis, reap_after=30, worker_name="me")
    assert check(_container(**_here(os.getppid(), "other"))) == "other"  # a live process started before the container


def test_a_dead_owner_this_worker_or_no_owner_labels_do_not(fake_redis):
    check = owner_check(fake_redis, reap_after=30, worker_name="me")
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert check(_container(**_here(gone.pid, "other"))) is None
    assert check(_container(**_here(os.getppid(), "me"))) is None  # this worker's own: followed as before
    assert check(_container()) is None


def test_an_owner_elsewhere_is_judged_by_its_rq_heartbeat(fake_redis):
    check = owner_check(fake_redis, reap_after=30, worker_name="me")
    labels = {LABEL_HOST: "another-host", LABEL_PID: "12345", LABEL_WORKER: "w-elsewhere"}
    assert check(_container(**labels)) is None  # no rq worker hash: not known alive
