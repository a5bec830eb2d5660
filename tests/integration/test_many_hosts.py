"""Many hosts: two Docker daemons (nodes) on one Redis, and a Redis that forgets.

Node A is this machine's dockerd; node B a second dockerd of the test's own
(``docker_node``: own data root, exec root, socket; no bridge, no iptables).
Workers pick their daemon by ``DOCKER_HOST`` and have an executor id per node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest
import redis

from producer import ExecutionVanished, Producer
from schemas import ExecutionStatus
from scripts.faults import FAST_REAP_ENV, RedisServer
from worker.config.deployment import LABEL_DEPLOYMENT
from worker.executor import new_executor
from polling import wait_until

pytestmark = pytest.mark.integration

DOCKRQ = str(Path(sys.executable).with_name("dockrq"))


def _request(eid, *cmd, **fields):
    return {"execution_id": eid, "engine": {"image": "dockrq-test/busybox:latest", "cmd": list(cmd)}, **fields}


class Sightings:
    """Polls both daemons while executions run: which executor's containers each one holds."""

    def __init__(self, daemons: dict[str, docker.DockerClient], label: str) -> None:
        self.daemons, self.label = daemons, label
        self.seen: dict[str, set[str]] = {name: set() for name in daemons}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, client in self.daemons.items():
                try:
                    for c in client.api.containers(all=True, filters={"label": self.label}):
                        self.seen[name].add(c["Labels"]["dockrq.executor"])
                except docker.errors.DockerException:
                    pass
            time.sleep(0.05)

    def __enter__(self) -> Sightings:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_executions_spread_over_two_nodes_and_ls_shows_the_node(
    docker_node, spawn_worker, redis_url, docker_client, unique
):
    node_b = docker_node()
    a, b = f"a-{unique}", f"b-{unique}"
    started = [spawn_worker(executor_id=a, ready=False),
               spawn_worker(executor_id=b, env={"DOCKER_HOST": node_b.docker_host}, ready=False)]
    spawn_worker.ready(2, started)
    client_b = docker.DockerClient(base_url=node_b.docker_host)
    ids = [f"spread{i}-{unique}" for i in range(8)]
    with Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer, Sightings(
        {"A": docker_client, "B": client_b}, LABEL_DEPLOYMENT
    ) as sightings:
        producer.submit_many([_request(i, "sh", "-c", "sleep 0.7; echo ran") for i in ids])
        outcomes = [producer.wait(i, timeout=120) for i in ids]
        views = [producer.status(i) for i in ids]
    assert [o.status for o in outcomes] == [ExecutionStatus.SUCCEEDED] * len(ids)
    assert {v.node for v in views} == {a, b}, "both nodes ran executions"
    # Each node's containers were on its own daemon only.
    assert a in sightings.seen["A"] and b in sightings.seen["B"]
    assert b not in sightings.seen["A"] and a not in sightings.seen["B"]

    base = [DOCKRQ, "--redis-url", redis_url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue]
    listing = subprocess.run([*base, "ls"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    assert "NODE" in listing.stdout and a in listing.stdout and b in listing.stdout
    shown = json.loads(subprocess.run([*base, "--json", "status", ids[0]], capture_output=True, text=True, timeout=60).stdout)
    assert shown["node"] in (a, b)
    # Nothing left on either daemon.
    assert not client_b.containers.list(ignore_removed=True, all=True)
    client_b.close()


def test_forgotten_containers_of_this_deployment_are_removed_and_another_deployments_spared(
    spawn_worker, docker_client, unique, test_image
):
    """A container labelled with this deployment whose execution Redis does not know (data lost)
    is removed after the orphan grace; one of another deployment on the same daemon never is."""
    ours, theirs = f"dep-{unique}", f"other-{unique}"
    worker = spawn_worker(env={**FAST_REAP_ENV, "DOCKRQ_DEPLOYMENT": ours}, ready=False)  # comes up meanwhile
    made = []
    for deployment in (ours, theirs):
        ex = new_executor(f"gone-{unique}", labels={LABEL_DEPLOYMENT: deployment}, stop_grace_seconds=0)
        ex.start(_request(f"{deployment}-x", "sleep", "120"))
        made.append(ex)
    spawn_worker.ready(1, [worker])

    def present(deployment):
        return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"{LABEL_DEPLOYMENT}={deployment}"})

    try:
        wait_until(lambda: not present(ours), 60, "this deployment's forgotten container to be removed")
        time.sleep(2 * float(FAST_REAP_ENV["DOCKRQ_REAP_INTERVAL_SECONDS"]) + 1)  # more passes: still spared
        assert len(present(theirs)) == 1
    finally:
        for ex in made:
            ex.cleanup()
            ex.close()


def test_waiters_end_when_redis_loses_its_data(spawn_worker, tmp_path, unique, docker_client):
    """Redis restarted without persistence while an execution runs: its waiter and its log follower
    end with ExecutionVanished instead of waiting forever; the worker serves new submissions."""
    server = RedisServer(tmp_path, durable=False)
    server.start()
    try:
        # Two: one is free while the other is busy; its reaper leaves the busy one's forgotten container
        # to its live owner (worker.faults.owner), so nothing ends the execution before the waiter gives up.
        spawn_worker.many(2, redis_url=server.url, env=FAST_REAP_ENV)
        producer = Producer(server.url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
        # Runs well past the waiter's give-up (a few seconds): had it ended first, the worker would
        # have written its outcome to the empty Redis and the waiter would have that instead.
        eid = producer.submit(_request(f"forgot-{unique}", "sh", "-c", "echo started; sleep 25; echo done"))
        wait_until(lambda: producer.status(eid).state.value == "running", 60, "the execution to run")
        ended: dict[str, BaseException | object] = {}

        def wait() -> None:
            try:
                ended["wait"] = producer.wait(eid, timeout=120)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                ended["wait"] = exc

        def follow() -> None:
            try:
                ended["logs"] = list(producer.logs(eid, follow=True))
            except BaseException as exc:  # noqa: BLE001
                ended["logs"] = exc

        threads = [threading.Thread(target=wait, daemon=True), threading.Thread(target=follow, daemon=True)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.kill()
        server.start()  # same port, empty
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a waiter or follower hangs on a forgotten execution"
        # What the emptied Redis holds under the execution's id tells why, if it was not seen vanishing.
        left = sorted(k for k in redis.Redis.from_url(server.url).keys(f"*{eid}*"))
        assert isinstance(ended["wait"], ExecutionVanished), (ended["wait"], left)
        assert "Redis no longer knows it" in str(ended["wait"])
        assert isinstance(ended["logs"], ExecutionVanished), ended["logs"]  # a follow cut short says so
        # The worker carries on against the empty Redis.
        again = producer.submit(_request(f"after-{unique}", "echo", "again"))
        assert producer.wait(again, timeout=120).status == ExecutionStatus.SUCCEEDED
        producer.close()
    finally:
        server.kill()


def test_a_whole_node_lost_and_back(docker_node, spawn_worker, redis_url, redis_client, docker_client, unique, tmp_path):
    """SIGKILL node B (its workers and its dockerd) while it runs two executions: each gets exactly
    one outcome -- re-run on node A when its retries allow, ``lost`` otherwise -- and their waiters
    and log followers end. B comes back (dockerd and a worker): its old containers are removed by
    its own worker after the orphan grace, nothing gets a second outcome, and neither node A's
    execution nor another deployment's container on B is touched."""
    node_b = docker_node()
    a, b = f"a-{unique}", f"b-{unique}"
    env_b = {**FAST_REAP_ENV, "DOCKER_HOST": node_b.docker_host}
    grace = float(FAST_REAP_ENV["DOCKRQ_ORPHAN_GRACE_SECONDS"])
    shared = tmp_path / "shared"  # a host directory both daemons bind-mount: what the first run leaves
    shared.mkdir()
    mount_root = ("--allow-mount-root", str(shared))
    b_workers = spawn_worker.many(2, *mount_root, executor_id=b, env=env_b)
    client_b = docker.DockerClient(base_url=node_b.docker_host)
    stranger = client_b.containers.run(  # another deployment's, on B: never to be touched
        "dockrq-test/busybox:latest", ["sleep", "300"], detach=True, network_mode="none",
        labels={"dockrq.execution": f"stranger-{unique}", "dockrq.executor": b, LABEL_DEPLOYMENT: f"other-{unique}",
                "dockrq.created": "1"},
    )
    producer = Producer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix)
    # The first run of each marks /data/NAME and is still running when B dies; a re-run finds the mark and ends at once.
    def cmd(name):
        return ["sh", "-c", f"if [ -e /data/{name} ]; then echo end; else touch /data/{name}; echo begin; sleep 300; fi"]

    mounts = [{"source": str(shared), "target": "/data", "read_only": False}]
    again, once = f"again-{unique}", f"once-{unique}"
    producer.submit(_request(again, *cmd("again"), retries=1, mounts=mounts))
    producer.submit(_request(once, *cmd("once"), retries=0, mounts=mounts))
    wait_until(lambda: all(producer.status(e).state.value == "running" for e in (again, once)), 60, "both running on B")
    assert {producer.status(e).node for e in (again, once)} == {b}
    spawn_worker.many(2, *mount_root, executor_id=a, env=FAST_REAP_ENV)

    results: dict[str, object] = {}

    def record(key, fn):
        try:
            results[key] = fn()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[key] = exc

    threads = [
        threading.Thread(target=record, args=(f"wait-{e}", lambda e=e: producer.wait(e, timeout=180)), daemon=True)
        for e in (again, once)
    ] + [
        threading.Thread(target=record, args=(f"logs-{e}", lambda e=e: list(producer.logs(e, follow=True))), daemon=True)
        for e in (again, once)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)

    killed = time.monotonic()
    for w in b_workers:  # the whole node at once: workers and daemon, SIGKILL
        w.kill()
    node_b.kill()
    wait_until(lambda: redis_client.exists(producer.keys.outcome(once)), 60, "the lost execution's outcome")
    lost_after = time.monotonic() - killed
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a waiter or log follower hangs"
    assert results[f"wait-{once}"].status == ExecutionStatus.LOST, results[f"wait-{once}"]
    assert results[f"wait-{once}"].error.code == "worker_lost"
    rerun = results[f"wait-{again}"]
    assert (rerun.status, rerun.result.stdout) == (ExecutionStatus.SUCCEEDED, "end\n"), rerun  # after B's first run
    assert producer.status(again).node == a, "re-run on the surviving node"
    for e in (again, once):
        assert not isinstance(results[f"logs-{e}"], BaseException), results[f"logs-{e}"]
    print(f"lost outcome {lost_after:.1f}s after the node died (reap after "
          f"{FAST_REAP_ENV['DOCKRQ_REAP_AFTER_SECONDS']}s + interval {FAST_REAP_ENV['DOCKRQ_REAP_INTERVAL_SECONDS']}s)")

    # Node A runs something while B comes back: B's worker must leave it alone.
    on_a = producer.submit(_request(f"on-a-{unique}", "sh", "-c", "sleep 6; echo fine"))
    wait_until(lambda: producer.status(on_a).state.value == "running", 60, "A's execution to run")
    node_b.start()  # dockerd's restore stops the containers its shims kept running
    old = client_b.containers.list(ignore_removed=True, all=True, filters={"label": "dockrq.execution"})
    assert {c.labels["dockrq.execution"] for c in old} >= {again, once, f"stranger-{unique}"}
    spawn_worker(*mount_root, executor_id=b, env=env_b)
    wait_until(
        lambda: {c["Labels"]["dockrq.execution"] for c in client_b.api.containers(all=True)} == {f"stranger-{unique}"},
        60 + grace, "B's worker to remove its old containers",
    )
    assert producer.wait(on_a, timeout=120).status == ExecutionStatus.SUCCEEDED
    time.sleep(1)  # a few more reaper passes
    for e in (again, once, on_a):
        assert redis_client.llen(producer.keys.outcome(e)) == 1, f"{e} has more than one outcome"
    stranger.reload()
    assert stranger.labels[LABEL_DEPLOYMENT] == f"other-{unique}"
    client_b.close()
    producer.close()
