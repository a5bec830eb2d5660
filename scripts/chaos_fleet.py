"""scripts/chaos.py across many hosts: ``--nodes 2`` and ``--sentinel``.

    .venv/bin/python scripts/chaos.py --executions 200 --workers 4 --nodes 2 --sentinel --no-restart-dockerd

``--nodes 2``: every odd worker slot runs on a second dockerd of the run's own
(scripts/docker_node.py: own data root, exec root and socket; no bridge, no
iptables), the test image loaded into it. Once, at about 40 % done, that whole
node is killed at once -- its workers and its dockerd, SIGKILL -- and after
``--node-down`` seconds its dockerd and workers are started again. Figures
added: ``node_kills``, ``recover_seconds.node_loss`` (from the kill until every
execution the node held was re-enqueued or ended by another node's reaper), and
orphans are counted on both daemons.

``--sentinel``: Redis is a Sentinel group (scripts/sentinel_group.py: master,
replica, three Sentinels, down-after 1 s); workers and the producer use its
``redis+sentinel://`` URL with ``DOCKRQ_REPLICA_ACKS=1``. The Redis fault is a
failover: the master is SIGKILLed, the Sentinels promote the replica, and the
old master is started again (the Sentinels make it the new master's replica).
Figures added: ``failovers``, ``recover_seconds.failover``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import docker

from producer import Producer
from schemas.connections import client_from_url
from scripts.chaos import IMAGE, Session, WorkerSlot, say
from scripts.docker_node import DockerNode
from scripts.sentinel_group import SentinelGroup


class FleetSession(Session):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.group: SentinelGroup | None = SentinelGroup(self.tmp / "sentinel") if args.sentinel else None
        self.node: DockerNode | None = DockerNode() if args.nodes > 1 else None
        self.node_docker: docker.DockerClient | None = None
        self.node_killed = False
        self.recoveries.update({"node_loss": [], "failover": []})
        self.report.node_kills = 0  # type: ignore[attr-defined]
        self.report.failovers = 0  # type: ignore[attr-defined]

    # -- setup ------------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.group.url if self.group is not None else self.redis.url

    def slot_env(self, slot: WorkerSlot) -> dict[str, str]:
        env = {}
        if self.group is not None:
            env["DOCKRQ_REPLICA_ACKS"] = "1"
        if self.node is not None and slot.index % 2 == 1:
            env["DOCKER_HOST"] = self.node.docker_host
        return env

    def start_backends(self) -> None:
        if self.group is not None:
            self.group.start()
            self.client = client_from_url(self.group.url)
            self.producer = Producer(self.group.url, queue=self.queue, prefix=self.prefix, replica_acks=1)
        else:
            super().start_backends()
        if self.node is not None:
            self.node.start()
            self.node.load_image(IMAGE)
            self.node_docker = docker.DockerClient(base_url=self.node.docker_host)

    def describe(self) -> str:
        where = self.group.url if self.group is not None else f"redis :{self.redis.port}"
        nodes = f", node B {self.node.docker_host}" if self.node is not None else ""
        return f"{where}, {self.args.workers} workers on queue {self.queue}{nodes}"

    # -- faults ---------------------------------------------------------------------------------------

    def kill_one(self) -> None:
        if self.node is not None and not self.node_killed and self.done_count() >= 0.4 * len(self.ids):
            self.kill_node()
            return
        super().kill_one()

    def kill_node(self) -> None:
        assert self.node is not None
        self.node_killed = True
        slots = [s for s in self.slots if s.index % 2 == 1]
        owned: dict[str, list[str]] = {}
        for slot in slots:
            slot.restarting = True  # the run loop leaves them to us
            try:
                owned[slot.name] = self.owned_by(slot.name)
            except Exception:  # noqa: BLE001 - Redis may be failing over
                owned[slot.name] = []
        killed_at = time.monotonic()
        for slot in slots:
            slot.kill()
        self.node.kill()
        self.report.node_kills += 1  # type: ignore[attr-defined]
        held = sum(len(v) for v in owned.values())
        say(f"node B lost: SIGKILL {len(slots)} workers and its dockerd (running {held}); back in {self.args.node_down:g}s")

        def settle_and_return() -> None:
            pending = {(eid, name) for name, ids in owned.items() for eid in ids}
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:
                try:
                    pending = {(eid, name) for eid, name in pending if not self.released(eid, name)}
                except Exception:  # noqa: BLE001
                    pass
                time.sleep(0.2)
            if held:
                self.recoveries["node_loss"].append(round(time.monotonic() - killed_at, 2))
            time.sleep(max(0.0, self.args.node_down - (time.monotonic() - killed_at)))
            self.node.start()
            for slot in slots:
                slot.start()
                slot.restarting = False
            say("node B is back (dockerd and workers)")

        threading.Thread(target=settle_and_return, daemon=True).start()

    def restart_redis(self) -> None:
        if self.group is None:
            super().restart_redis()
            return
        old = self.group.kill_master()
        say(f"SIGKILL the Redis master (:{old}); waiting for the Sentinels to promote the replica")
        new = self.group.wait_failover(old)
        back = time.time()
        self.report.failovers += 1  # type: ignore[attr-defined]
        self.report.redis_restarts += 1  # the old master is started again below
        say(f"failover done: master is :{new}; the old master comes back as its replica")
        self.group.start_server(old)
        threading.Thread(
            target=lambda: self.recoveries["failover"].append(self.first_success_after(back, 120)), daemon=True
        ).start()

    # -- observation ------------------------------------------------------------------------------------

    def _daemons(self) -> list[docker.DockerClient]:
        return [self.docker] + ([self.node_docker] if self.node_docker is not None else [])

    def monitor(self) -> None:
        label = f"chaos-{self.token}-"
        while not self.stop_monitor.wait(0.5):
            seen: Counter[str] = Counter()
            for client in self._daemons():
                try:
                    running = client.api.containers(filters={"label": "dockrq.execution"})
                except Exception:  # noqa: BLE001 - a daemon may be down
                    continue
                seen.update(
                    c["Labels"].get("dockrq.execution") for c in running
                    if c["Labels"].get("dockrq.executor", "").startswith(label)
                )
            self.overlaps.update(eid for eid, n in seen.items() if n > 1)

    def session_containers(self) -> list[Any]:
        label = f"chaos-{self.token}-"
        found = []
        for client in self._daemons():
            try:
                everything = client.containers.list(ignore_removed=True, all=True, filters={"label": "dockrq.execution"})
            except Exception:  # noqa: BLE001
                continue
            found += [c for c in everything if c.labels.get("dockrq.executor", "").startswith(label)]
        return found

    def settle(self) -> None:
        super().settle()
        self.report.recover_seconds["node_loss"] = next(iter(self.recoveries["node_loss"]), None)
        self.report.recover_seconds["failover"] = next(iter(self.recoveries["failover"]), None)

    def close(self, keep: bool) -> None:
        try:
            super().close(keep)
        finally:
            if self.node_docker is not None:
                self.node_docker.close()
            if self.node is not None:
                self.node.stop()
            if self.group is not None:
                self.group.stop()
