"""Docker distribution registries on loopback, for the suite, the demo and the bench.

Debian's ``docker-registry`` (distribution 2.8) serves the registry API v2 over
plain HTTP; dockerd talks plain HTTP to any registry on 127.0.0.0/8, so no TLS
is needed on loopback. Optionally with htpasswd (bcrypt) basic auth, which the
registry accepts over plain HTTP too: a private registry.

Nothing here outlives the process that started it: whoever starts a registry
stops it (and the kernel sends the child SIGTERM if that process dies first:
``PR_SET_PDEATHSIG``). ``scripts/setup.sh`` starts none.

* the suite's session fixtures (``tests/integration/conftest.py``) and
  ``scripts/bench_pull.py`` start theirs with :class:`Registry` (``start`` /
  ``stop``, or as a context manager) on a free or given loopback port, push
  what they need (:func:`push_image`) and stop them at the end;
* ``python3 scripts/registry.py serve`` runs one in the foreground to try
  things by hand, the test image pushed, until Ctrl-C (then it is stopped);
* :class:`StallingProxy` sits between dockerd and a registry and stops
  forwarding after some bytes: a registry that stops answering mid-pull.

Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY_BIN = "docker-registry"  # Debian package docker-registry
TEST_IMAGE = "dockrq-test/busybox:latest"  # scripts/setup.sh builds it
# The suite's private registry account (a test credential on loopback, not a secret).
DEFAULT_USER = "dockrq"
DEFAULT_PASSWORD = "dockrq-registry-test"

_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}:{port}
{auth}"""

_AUTH = """\
auth:
  htpasswd:
    realm: dockrq-registry
    path: {htpasswd}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a registry API v2 answers on host:port (200, or 401 when it wants a login)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=timeout) as response:
            return response.headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    except urllib.error.HTTPError as exc:
        return exc.code == 401 and exc.headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    except (OSError, ValueError):
        return False


def write_htpasswd(path: Path | str, user: str, password: str) -> None:
    """An htpasswd file with one bcrypt entry (``htpasswd -B``, apache2-utils), the only hash
    distribution's htpasswd auth accepts."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RuntimeError("htpasswd is missing: apt-get install apache2-utils (scripts/setup.sh does)")
    out = subprocess.run([htpasswd, "-Bbn", user, password], capture_output=True, text=True, check=True)
    Path(path).write_text(out.stdout.strip() + "\n")


class Registry:
    """One ``docker-registry serve`` process on ``host:port`` with its storage in ``root``.

    ``htpasswd``: a file of bcrypt entries; the registry then wants a login (basic auth).
    ``address`` is what image references name: ``127.0.0.1:PORT``.
    """

    def __init__(
        self, root: Path | str, port: int | None = None, *, htpasswd: Path | str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port or free_port()
        self.htpasswd = Path(htpasswd) if htpasswd else None
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        auth = _AUTH.format(htpasswd=self.htpasswd) if self.htpasswd else ""
        self.config_path.write_text(_CONFIG.format(data=self.root / "data", host=self.host, port=self.port, auth=auth))
        return self.config_path

    def start(self, timeout: float = 20.0) -> None:
        """Start it (output in ``ROOT/registry.log``) and wait until it answers; a second call
        while it runs does nothing. It dies with the calling thread's process if not stopped
        before. Raises RuntimeError (missing binary, port taken, no answer within ``timeout``)."""
        if self.pid is not None:
            return
        binary = shutil.which(REGISTRY_BIN)
        if binary is None:
            raise RuntimeError(f"{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/setup.sh does)")
        if answers(self.host, self.port, timeout=0.5):
            raise RuntimeError(f"a registry already answers on {self.address}: choose another port")
        config = self.write_config()
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not answers(self.host, self.port, timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.root / "registry.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"docker-registry on {self.address} did not start:\n{tail}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        """The registry process's pid while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``, and reap it; nothing when not running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent thread ends (prctl PR_SET_PDEATHSIG,
    Linux), so a registry never outlives a test session or bench killed before its cleanup ran."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class StallingProxy:
    """A loopback TCP proxy to ``target`` (host, port) that forwards the first
    ``stall_after`` bytes of each connection's responses and then stops answering
    (the connection stays open, nothing more comes): a registry that hangs mid-pull.

    ``stall_after=None`` forwards everything. ``close()`` ends every connection.
    """

    def __init__(self, target: tuple[str, int], *, stall_after: int | None) -> None:
        self.target = target
        self.stall_after = stall_after
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stalled = threading.Event()  # set once some connection stalled
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.stall_after), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: max(0, limit - sent)])
                    self.stalled.set()
                    while not self._closed:  # hold the connection open, say nothing more
                        time.sleep(0.1)
                    return
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._server.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- images for tests and the bench (docker CLI) -------------------------------------


def docker(*args: str, config: Path | str | None = None, check: bool = True, timeout: float = 600) -> str:
    """Run the docker CLI; its stdout. ``config``: a DOCKER_CONFIG directory (logins) for this call."""
    env = {**os.environ, **({"DOCKER_CONFIG": str(config)} if config else {})}
    out = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def write_login(config_dir: Path | str, registry: str, user: str, password: str) -> Path:
    """A Docker config holding a login for ``registry``, as ``docker login`` writes it (plain ``auths``)."""
    import base64
    import json

    path = Path(config_dir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return path


def build_image(
    ref: str, *, base: str = "dockrq-test/busybox:latest", files: dict[str, bytes] | None = None,
    random_layers: int = 0, layer_bytes: int = 0,
) -> None:
    """Build ``ref`` from ``base``: one layer per entry of ``files`` (path in the image: content),
    then ``random_layers`` layers of ``layer_bytes`` random bytes each (incompressible, so that
    many bytes cross the wire on a pull)."""
    import tempfile

    with tempfile.TemporaryDirectory() as ctx:
        lines = [f"FROM {base}"]
        for i, (target, content) in enumerate((files or {}).items()):
            Path(ctx, f"f{i}").write_bytes(content)
            lines.append(f"COPY f{i} {target}")
        for i in range(random_layers):
            with open(Path(ctx, f"r{i}"), "wb") as out:
                left = layer_bytes
                while left > 0:
                    chunk = min(left, 1 << 20)
                    out.write(os.urandom(chunk))
                    left -= chunk
            lines.append(f"COPY r{i} /data/r{i}")
        Path(ctx, "Dockerfile").write_text("\n".join(lines) + "\n")
        docker("build", "-q", "-t", ref, ctx)


def push(ref: str, *, config: Path | str | None = None, remove: bool = True) -> str:
    """Push ``ref`` (named with its registry) and return its manifest digest (``sha256:...``).
    ``remove``: then remove it from the daemon (the tag; the image too when no other tag holds it),
    so the next use of ``ref`` must pull it."""
    out = docker("push", ref, config=config)
    digest = next((w for w in out.split() if w.startswith("sha256:")), None)
    if digest is None:
        raise RuntimeError(f"docker push {ref}: no digest in its output: {out[-500:]}")
    if remove:
        docker("rmi", ref)
    return digest


def remove_image(ref: str) -> None:
    """``docker rmi`` that does not mind an image already gone."""
    docker("rmi", "-f", ref, check=False)


def push_image(image: str, registry: str, *, user: str | None = None, password: str | None = None) -> str:
    """Push the local ``image`` (``repo:tag``) to ``registry`` (``host:port``) as ``registry/repo:tag``,
    logging in through a throwaway DOCKER_CONFIG when ``user`` is given (the caller's own Docker
    config is never touched); only that extra tag is removed after. Returns the reference."""
    import tempfile

    ref = f"{registry}/{image}"
    docker("tag", image, ref)
    try:
        with tempfile.TemporaryDirectory(prefix="dockrq-push-") as config:
            if user:
                write_login(config, registry, user, password or "")
            push(ref, config=config, remove=False)
    finally:
        docker("rmi", ref, check=False)
    return ref


def main(argv: list[str] | None = None) -> int:
    """``serve``: one registry in the foreground, the test image pushed, until Ctrl-C/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a registry on 127.0.0.1:PORT until Ctrl-C, then stop it")
    serve.add_argument("--port", type=int, default=0, help="default: a free port")
    serve.add_argument("--root", help="storage, config and log (default: a temporary directory, removed)")
    serve.add_argument("--user", help="want a login: this user (bcrypt htpasswd) with --password")
    serve.add_argument("--password", default=DEFAULT_PASSWORD)
    serve.add_argument("--image", default=TEST_IMAGE, help="local image to push ('' for none)")
    args = parser.parse_args(argv)
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # runs the finally below
    with tempfile.TemporaryDirectory(prefix="dockrq-registry-") as scratch:
        root = Path(args.root or scratch)
        htpasswd = None
        if args.user:
            root.mkdir(parents=True, exist_ok=True)
            htpasswd = root / "htpasswd"
            write_htpasswd(htpasswd, args.user, args.password)
        registry = Registry(root, args.port or None, htpasswd=htpasswd)
        try:
            registry.start()
            if args.image:
                push_image(args.image, registry.address, user=args.user, password=args.password)
            print(f"registry: serving on {registry.address} (root {root}); Ctrl-C stops it", file=sys.stderr)
            while registry.pid is not None:
                time.sleep(0.5)
            print(f"registry: it exited; see {root / 'registry.log'}", file=sys.stderr)
            return 1
        except RuntimeError as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            registry.stop()


if __name__ == "__main__":
    sys.exit(main())
