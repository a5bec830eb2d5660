"""Fault injection shared by scripts/chaos.py and the fault tests: a throwaway
redis-server that can be killed and started again on the same port, and
dockerd stopped and started again the way scripts/setup.sh starts it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

DOCKERD_START = "nohup dockerd >/var/log/dockrq-dockerd.log 2>&1 </dev/null &"  # as scripts/setup.sh

# Worker settings under which a dead worker is noticed and reaped in seconds, not the
# production defaults' half minute: for fault tests that kill workers.
FAST_REAP_ENV = {
    "DOCKRQ_HEARTBEAT_SECONDS": "0.5",
    "DOCKRQ_REAP_AFTER_SECONDS": "2",
    "DOCKRQ_REAP_INTERVAL_SECONDS": "0.5",
    "DOCKRQ_ORPHAN_GRACE_SECONDS": "3",
}


class RedisServer:
    """redis-server on a free port of its own, append-only file in ``directory``."""

    def __init__(self, directory: Path | str, *, durable: bool = True) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = directory
        self.durable = durable
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.durable else "no", "--appendfsync", "always",
                "--dir", str(self.dir),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:  # e.g. the port was taken meanwhile
                    raise RuntimeError(f"redis-server on port {self.port} exited ({self.proc.returncode})")
                try:
                    # Ours answering, not another server that won the port between bind and start.
                    if client.info("server")["process_id"] == self.proc.pid:
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def docker_up() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def stop_dockerd(timeout: float = 60) -> None:
    """SIGTERM (as ``kill`` does), SIGKILL after ``timeout``; returns once it is gone."""
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        if time.monotonic() > deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)


def ensure_dockerd(timeout: float = 120) -> None:
    """Start dockerd as scripts/setup.sh does unless one answers; wait until it does."""
    if docker_up():
        return
    subprocess.run(DOCKERD_START, shell=True, check=True)
    deadline = time.monotonic() + timeout
    while not docker_up():
        if time.monotonic() > deadline:
            raise RuntimeError("dockerd did not come back; see /var/log/dockrq-dockerd.log")
        time.sleep(0.5)


def restart_dockerd() -> float:
    """Stop dockerd and start it again; the seconds it was away."""
    down = time.monotonic()
    stop_dockerd()
    ensure_dockerd()
    return time.monotonic() - down
