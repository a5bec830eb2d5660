"""Fault injection shared by scripts/chaos.py and the fault tests: a throwaway
redis-server that can be killed and started again on the same port, and
dockerd stopped and started again the way scripts/setup.sh starts it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

MAIN_DOCKERD_PIDFILE = "/var/run/docker.pid"  # dockerd's default --pidfile
DOCKERD_START = "setsid nohup dockerd >/var/log/dockrq-dockerd.log 2>&1 </dev/null &"  # as scripts/setup.sh

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
    """SIGTERM the machine's dockerd (as ``kill`` does), SIGKILL after ``timeout``; returns once
    it is gone.

    Only the daemon of ``/var/run/docker.sock``, found by its pidfile (``/var/run/docker.pid``,
    dockerd's default): a second daemon (scripts/docker_node.py: its own ``--pidfile``) is
    another node and is left running. A zombie counts as gone: a daemon that is some test
    process's child stays in ``/proc`` until that process reaps it.
    """
    pid = _main_dockerd_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _main_dockerd_pid() -> int | None:
    try:
        pid = int(Path(MAIN_DOCKERD_PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
