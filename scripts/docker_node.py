#!/usr/bin/env python3
"""A second Docker daemon on this machine: another "node" for many-host tests and chaos runs.

    .venv/bin/python scripts/docker_node.py start            # prints DOCKER_HOST=unix:///tmp/dockrq-node-XXXX/docker.sock
    DOCKER_HOST=unix:///tmp/dockrq-node-XXXX/docker.sock DOCKRQ_EXECUTOR_ID=node-b dockrq-worker run
    .venv/bin/python scripts/docker_node.py stop /tmp/dockrq-node-XXXX

The daemon gets its own ``--data-root``, ``--exec-root``, ``--pidfile`` and
unix socket, all under one temporary directory, and changes nothing on the
host's network (``--bridge=none --iptables=false --ip6tables=false``; a
container can use network ``none`` only). It runs in a network namespace of its
own (``unshare --net``, only ``lo`` up in it): a dockerd started with
``--bridge=none`` deletes the ``docker0`` interface it finds in its namespace
(libnetwork's ``removeDefaultBridgeInterface``), which in the host's namespace
is the main daemon's bridge, and that daemon's bridge networking breaks. Only
the unix socket (a file) joins the node to the host. dockerd starts a containerd of its
own under its exec root; that containerd, and each container's
``containerd-shim``, name the directory in their command line, which is how
``stop`` finds and ends whatever survived (after a SIGKILLed dockerd the shims
keep running). The test image is copied in with ``docker save | docker load``
(no registry).

The pytest fixture ``docker_node`` (tests/integration/conftest.py) uses
:class:`DockerNode` the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# /proc/PID/comm of what a dockerd leaves running (comm is cut at 15 bytes).
_DAEMON_PROGRAMS = {b"dockerd", b"containerd", b"containerd-shim", b"containerd-shim-runc-v2"[:15]}
DEFAULT_IMAGE = os.environ.get("DOCKRQ_TEST_IMAGE", "dockrq-test/busybox:latest")


class DockerNode:
    """One extra ``dockerd`` under ``root`` (a new temporary directory when None).

    ``docker_host`` is the ``DOCKER_HOST`` value for its socket. ``start()`` is
    idempotent and can follow ``kill()`` (a node coming back: same data root, so
    the old containers are still there, stopped by dockerd's restore). ``stop()``
    removes everything: containers, the daemon, its containerd and shims, mounts
    and the directory.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        # Short paths: containerd's sockets live under the exec root (unix socket paths <= 107 bytes).
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="dockrq-node-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.docker_host = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- the daemon ---------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that should use this daemon (docker CLI, docker-py, workers)."""
        return {**os.environ, "DOCKER_HOST": self.docker_host}

    def command(self) -> list[str]:
        """dockerd's command line, run in a new network namespace: ``unshare --net`` (no fork, so
        the process started is dockerd itself once ``sh`` has brought ``lo`` up and exec'd it)."""
        dockerd = [
            shutil.which("dockerd") or "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.pidfile),
            "--host", self.docker_host,
            "--bridge=none", "--iptables=false", "--ip6tables=false",
        ]
        return [
            shutil.which("unshare") or "unshare", "--net", "--",
            "sh", "-c", 'ip link set lo up && exec "$@"', "dockrq-node", *dockerd,
        ]

    def up(self) -> bool:
        """Whether the daemon answers (a ``_ping`` over its socket)."""
        if not self.socket.exists():
            return False
        try:
            out = subprocess.run(
                ["docker", "version", "-f", "{{.Server.Version}}"], env=self.env, capture_output=True, timeout=10
            )
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0

    def start(self, timeout: float = 60) -> DockerNode:
        """Start the daemon (unless it answers) and return once it answers. RuntimeError if it does not."""
        if self.proc is not None and self.proc.poll() is None and self.up():
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        if self._daemon_pid() is None:
            # Left by a killed daemon; dockerd refuses to start while its PID still exists (a zombie counts).
            self.pidfile.unlink(missing_ok=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"dockerd under {self.root} did not start:\n{tail}")
            time.sleep(0.2)
        return self

    def load_image(self, image: str = DEFAULT_IMAGE) -> None:
        """Copy ``image`` from the default daemon into this one (``docker save | docker load``)."""
        save = subprocess.Popen(
            ["docker", "save", image], stdout=subprocess.PIPE, env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        )
        load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=self.env, capture_output=True, timeout=300)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(60) != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {image} into {self.docker_host} failed: {load.stderr.decode(errors='replace')}")

    def kill(self) -> None:
        """SIGKILL the daemon, as a host that loses power would (its containerd follows it; the
        shims and the containers they hold keep running until the daemon comes back)."""
        pid = self._daemon_pid()
        if pid is not None:
            _signal(pid, signal.SIGKILL)
            _wait_gone([pid], 10)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """Remove every container, stop the daemon, end its leftovers, unmount and delete ``root``.

        A daemon that was killed is started once more first: its restore stops the containers
        its shims kept running, and ``docker rm`` then removes them the ordinary way.
        """
        if not self.up() and self.strays():
            try:
                self.start(timeout=timeout)
            except RuntimeError:
                pass  # the leftovers are killed below
        if self.up():
            subprocess.run(
                "ids=$(docker ps -aq); [ -z \"$ids\" ] || docker rm -f $ids",
                shell=True, env=self.env, capture_output=True, timeout=120,
            )
        pid = self._daemon_pid()
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            if not _wait_gone([pid], timeout):
                _signal(pid, signal.SIGKILL)
                _wait_gone([pid], 10)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        strays = self.strays()
        # Whatever is left (a daemon that would not start again): each shim's child is a
        # container's init; killing it ends every process of that container's PID namespace.
        children = [pid for pid in _all_pids() if _parent(pid) in strays and pid not in strays]
        for pid in children + strays:
            _signal(pid, signal.SIGKILL)
        _wait_gone(children + strays, 10)
        self._unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def strays(self) -> list[int]:
        """PIDs of this node's dockerd, containerd and containerd-shim processes: those programs
        whose command line names this node's directory (a shell that merely mentions it is not one)."""
        marker = str(self.root).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/comm", "rb") as f:
                    comm = f.read().strip()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if comm in _DAEMON_PROGRAMS and marker in cmdline:
                found.append(int(entry))
        return found

    def _daemon_pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _unmount(self) -> None:
        """dockerd bind-mounts its data root (and overlay layers, netns files) under ``root``."""
        prefix = str(self.root) + "/"
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop a second Docker daemon (a dockrq node) on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start one (prints its DOCKER_HOST and directory)")
    start.add_argument("--dir", help="its directory (default: a new /tmp/dockrq-node-*)")
    start.add_argument("--image", action="append", help=f"image to load into it (default {DEFAULT_IMAGE}); repeatable")
    stop = sub.add_parser("stop", help="remove its containers, stop it and delete its directory")
    stop.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "start":
        node = DockerNode(args.dir)
        try:
            node.start()
            for image in args.image or [DEFAULT_IMAGE]:
                node.load_image(image)
        except RuntimeError as exc:
            print(f"docker_node: {exc}", file=sys.stderr)
            node.stop()
            return 1
        print(f"DOCKER_HOST={node.docker_host}")
        print(f"# stop with: {sys.argv[0]} stop {node.root}", file=sys.stderr)
        return 0
    root = Path(args.dir)
    if not (root / "docker.sock").exists() and not (root / "data").exists():
        print(f"docker_node: {root} is not a node directory", file=sys.stderr)
        return 1
    DockerNode(root).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
