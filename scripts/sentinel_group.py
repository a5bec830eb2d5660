#!/usr/bin/env python3
"""A Redis Sentinel group on loopback: one master, one replica, three Sentinels, free ports.

    .venv/bin/python scripts/sentinel_group.py        # starts one, prints its DOCKRQ_REDIS_URL, Ctrl-C stops it

Used by the Sentinel failover test and ``scripts/chaos.py --sentinel``. Short
timeouts (``down-after-milliseconds`` 1000, ``failover-timeout`` 3000) so a
SIGKILLed master is replaced in seconds. Nothing is persisted; every process
runs in its own session and ``stop()`` SIGKILLs them all.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

SERVICE = "dockrq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SentinelGroup:
    """``start()``, then ``url`` (``redis+sentinel://...``); ``kill_master()`` and ``wait_failover()``."""

    def __init__(
        self, directory: Path | str | None = None, *, service: str = SERVICE, sentinels: int = 3,
        down_after_ms: int = 1000, failover_timeout_ms: int = 3000,
    ) -> None:
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="dockrq-sentinel-"))
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.server_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, port: int, args: list[str]) -> None:
        log = open(self.dir / f"{port}.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[port] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir
        )
        log.close()

    def start_server(self, port: int, replica_of: int | None = None) -> None:
        args = [
            shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", f"dump-{port}.rdb",
            # Sentinel moves replicas between masters with REPLICAOF and CONFIG REWRITE: give it a file.
        ]
        conf = self.dir / f"redis-{port}.conf"
        conf.write_text("")
        args.insert(1, str(conf))
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args)
        self._await(lambda: redis.Redis(port=port, socket_timeout=1).ping(), f"redis-server on :{port}")

    def start(self, timeout: float = 60) -> SentinelGroup:
        self.dir.mkdir(parents=True, exist_ok=True)
        master, replica = self.server_ports
        self.start_server(master)
        self.start_server(replica, replica_of=master)
        self._await(
            lambda: redis.Redis(port=replica, socket_timeout=1).info("replication").get("master_link_status") == "up",
            "the replica to sync", timeout,
        )
        sentinel = shutil.which("redis-sentinel")
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            cmd = [sentinel, str(conf)] if sentinel else [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"]
            self._spawn(port, cmd)
        # Ready: every Sentinel knows the replica and the other Sentinels (needed to elect a leader).
        others = len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            self._await(lambda c=client: len(c.sentinel_slaves(self.service)) == 1, f"sentinel :{port} to see the replica", timeout)
            self._await(
                lambda c=client: len(c.sentinel_sentinels(self.service)) == others, f"sentinel :{port} to see the others", timeout
            )
            client.close()
        return self

    def master_port(self) -> int:
        """The master's port as the Sentinels (a majority of those answering) report it."""
        votes: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                host, master = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.service)
            except (redis.RedisError, TypeError):
                continue
            votes[int(master)] = votes.get(int(master), 0) + 1
        if not votes:
            raise RuntimeError("no Sentinel answers")
        return max(votes, key=votes.__getitem__)

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return port

    def wait_failover(self, old_port: int, timeout: float = 60) -> int:
        """Until every Sentinel names another master and that one says it is a master; its port."""

        def promoted() -> bool:
            for port in self.sentinel_ports:
                addr = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.service)
                if not addr or int(addr[1]) == old_port:
                    return False
            return redis.Redis(port=self.master_port(), socket_timeout=1).info("replication")["role"] == "master"

        self._await(promoted, "the Sentinels to promote the replica", timeout)
        return self.master_port()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _await(condition, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)


def main() -> int:
    group = SentinelGroup()
    try:
        group.start()
        print(f"DOCKRQ_REDIS_URL={group.url}", flush=True)
        print(f"# master :{group.master_port()}, files in {group.dir}; Ctrl-C stops it", file=sys.stderr, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
