"""worker.executor.transport: docker-py's calls on one kept-alive pool, across a daemon going away.

The executor keeps its connections to a local daemon alive between calls (one urllib3 pool,
not a new socket per call). A daemon that goes away and comes back (dockerd restarted: every
connection closed by the other end, the socket refusing meanwhile) must look as it did with a
fresh connection per call: a stale pooled connection is never used, a call while the daemon
is away raises a daemon error (never a hang), and the next execution runs. The daemon is the
shared one behind a unix-socket relay of this test's own, which "restarts" by closing every
connection and its listener, so the shared daemon itself is never touched.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading

import docker
import pytest

from schemas import ExecutionStatus
from worker.executor.client import DockerClient
from worker.executor.errors import DAEMON_ERRORS
from worker.executor.executor import DockerExecutor

pytestmark = pytest.mark.integration

DOCKER_SOCKET = "/var/run/docker.sock"


class Relay:
    """A unix socket relaying every connection to the Docker socket; ``down()`` closes all of them."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="dockrq-relay-")
        self.path = os.path.join(self.dir, "docker.sock")
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.accepted = 0

    def up(self) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        assert self.listener is not None
        self.listener.close()
        os.unlink(self.path)
        for s in self.open:
            for how in (socket.SHUT_RDWR,):
                try:
                    s.shutdown(how)
                except OSError:
                    pass
            s.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(DOCKER_SOCKET)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _run(executor: DockerExecutor, eid: str, image: str) -> ExecutionStatus:
    result = executor.run({"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", "seq 1 3"]}}, timeout=60)
    assert result.stdout == "1\n2\n3\n"
    return result.status


@pytest.fixture
def relay():
    r = Relay()
    r.up()
    yield r
    if r.listener is not None and r.listener.fileno() != -1:
        r.down()
    os.rmdir(r.dir)


def test_kept_alive_connections_survive_the_daemon_going_away(relay, test_image, unique):
    client = DockerClient(docker.APIClient(base_url=f"unix://{relay.path}", version="1.41"))
    assert client._lean is not None  # the lean transport is what this test is about
    executor = DockerExecutor(f"transport-{unique}", client=client)
    try:
        assert _run(executor, f"t1-{unique}", test_image) == ExecutionStatus.SUCCEEDED
        assert any(conn is not None for conn in list(client._lean.pool.pool.queue))  # kept between calls
        accepted = relay.accepted
        assert client.ping() and relay.accepted == accepted  # and reused: no new connection

        relay.down()  # the daemon goes away: every connection closed, the socket gone
        assert not client.ping()  # a daemon error, as with a fresh connection per call
        with pytest.raises(DAEMON_ERRORS):
            client.api.inspect_container("nothing-here")

        relay.up()  # back: the stale pooled connections are not used
        assert client.ping()
        assert _run(executor, f"t2-{unique}", test_image) == ExecutionStatus.SUCCEEDED
        with pytest.raises(docker.errors.NotFound):  # docker-py's own errors, status codes and all
            client.api.inspect_container(f"missing-{unique}")
    finally:
        executor.cleanup()
        executor.close()
