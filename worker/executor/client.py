"""A thin layer over docker-py's low-level APIClient, shaped for the executor.

It owns the few places where docker-py's defaults are wrong for long-running
jobs: the attach socket must have no read timeout (a quiet container would
otherwise look dead after 60 s), ``wait`` must block without a timeout, pulls
get a deadline of their own, and daemon failures become the executor's typed
errors. Everything else is docker-py as documented.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.auth
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from .errors import DAEMON_ERRORS, ContainerCreateError, DaemonError, DockerUnavailableError, GpuUnavailableError, ImagePullError
from .spec import LABEL_EXECUTION, LABEL_EXECUTOR, ContainerSpec, image_reference

log = logging.getLogger(__name__)

_STREAM_NAMES = {1: "stdout", 2: "stderr"}
_HEADER = struct.Struct(">BxxxL")
_CHUNK = 64 * 1024


class DockerClient:
    def __init__(self, api: docker.APIClient | None = None, *, pull_timeout: float = 300.0) -> None:
        try:
            self.api = api or docker.APIClient(**docker.utils.kwargs_from_env(), version="auto")
        except DockerException as exc:
            raise DockerUnavailableError(f"cannot create a Docker client: {exc}") from exc
        self.pull_timeout = pull_timeout
        if str(getattr(self.api, "base_url", "")).startswith("http+docker://"):
            # A local socket (unix, npipe, ssh): no HTTP proxy or netrc entry applies to it,
            # yet requests would look for them in the whole environment on every call
            # (a third of the client-side CPU of a Docker call, measured).
            self.api.trust_env = False
        # Images this client has seen present (inspected or pulled): an execution of
        # one of them skips the inspect. If one is removed meanwhile, create says so
        # (ImageMissing) and the handler makes it present again and retries.
        self._present: set[str] = set()
        # When the daemon last answered a request (any status): see answered_within.
        self._answered_at = float("-inf")
        hooks = getattr(self.api, "hooks", None)
        if isinstance(hooks, dict):  # a requests Session (docker.APIClient is one)
            hooks.setdefault("response", []).append(self._on_response)

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._answered_at = time.monotonic()

    def answered_within(self, seconds: float) -> bool:
        """Whether the daemon answered a request of this client in the last ``seconds``:
        as good as a ping that would have been made then, at no cost."""
        return time.monotonic() - self._answered_at < seconds

    def close(self) -> None:
        self.api.close()

    def ping(self) -> bool:
        try:
            return bool(self.api.ping())
        except DAEMON_ERRORS:
            return False

    def accepts_connections(self) -> bool:
        """Whether the daemon answers on a *new* connection.

        A dockerd that is shutting down closes its API listener first and then
        stops the containers, still answering on connections already open (a
        pending wait returns the stopped container's exit code): only a fresh
        connection tells that the daemon is going away.
        """
        if getattr(self.api, "base_url", None) != _env_base_url():
            return self.ping()  # a client made elsewhere: its own connection is all we know
        try:
            fresh = docker.APIClient(**docker.utils.kwargs_from_env(), version=self.api.api_version, timeout=5)
        except DAEMON_ERRORS:
            return False
        try:
            return bool(fresh.ping())
        except DAEMON_ERRORS:
            return False
        finally:
            fresh.close()

    # -- images ----------------------------------------------------------------
    def ensure_image(self, image: str, policy: str, handle: PullHandle | None = None) -> None:
        """Make ``image`` present according to the pull policy, within the pull deadline.

        ``handle.abort()`` from another thread ends a pull in progress (ImagePullError)."""
        if policy != "always":
            if image in self._present:
                return
            try:
                self.api.inspect_image(image)
                self._present.add(image)
                return
            except ImageNotFound:
                if policy == "never":
                    raise ImagePullError(f"image {image!r} is not present and pull_policy is 'never'") from None
            except DAEMON_ERRORS as exc:
                raise DaemonError(f"inspecting image {image!r} failed: {exc}") from exc
        self._pull(image, handle)
        self._present.add(image)

    def _pull(self, image: str, handle: PullHandle | None = None) -> None:
        # The daemon may hold the response headers back until the registry answers, so
        # the request itself can block: it runs in a thread the caller stops waiting for
        # when the execution is stopped or the pull deadline passes.
        handle = handle or PullHandle()
        deadline = time.monotonic() + self.pull_timeout
        failure: list[BaseException] = []

        def pull() -> None:
            try:
                self._pull_now(image, handle)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                failure.append(exc)
            finally:
                handle.done.set()

        threading.Thread(target=pull, name="dockrq-pull", daemon=True).start()
        while not handle.done.wait(0.1):
            if handle.aborted:
                raise ImagePullError(f"pulling {image!r} was cut short: the execution was stopped")
            if time.monotonic() > deadline + 1:
                handle.abort()
                raise ImagePullError(f"pulling {image!r} took longer than {self.pull_timeout:g} s")
        if failure:
            raise failure[0]
        if handle.aborted:
            raise ImagePullError(f"pulling {image!r} was cut short: the execution was stopped")

    def _pull_now(self, image: str, handle: PullHandle | None) -> None:
        repo, tag = image_reference(image)
        deadline = time.monotonic() + self.pull_timeout
        try:
            response = self._start_pull(repo, tag)
            if handle is not None:
                handle.attach(response)
            for message in self.api._stream_helper(response, decode=True):
                if "error" in message:
                    raise ImagePullError(f"pulling {image!r} failed: {message['error']}")
                if time.monotonic() > deadline:
                    raise ImagePullError(f"pulling {image!r} took longer than {self.pull_timeout:g} s")
        except ImagePullError:
            raise
        except DAEMON_ERRORS as exc:
            raise ImagePullError(f"pulling {image!r} failed: {_explain(exc)}") from exc

    def _start_pull(self, repo: str, tag: str) -> requests.Response:
        """``APIClient.pull(stream=True)`` minus the generator, so the response can be cut from another thread."""
        registry, _ = docker.auth.resolve_repository_name(repo)
        headers = {}
        header = docker.auth.get_config_header(self.api, registry)
        if header:
            headers["X-Registry-Auth"] = header
        response = self.api._post(
            self.api._url("/images/create"), params={"fromImage": repo, "tag": tag}, headers=headers,
            stream=True, timeout=None,
        )
        self.api._raise_for_status(response)
        return response

    # -- containers --------------------------------------------------------------
    def create(self, spec: ContainerSpec) -> tuple[str, bool]:
        """Container id and whether it was created now (False: it already existed)."""
        try:
            host_config = self.api.create_host_config(**spec.host_config)
            created = self.api.create_container(
                spec.image, name=spec.name, host_config=host_config, **spec.create
            )
            return created["Id"], True
        except ImageNotFound as exc:
            self._present.discard(spec.image)
            raise ImageMissing(f"the daemon refused the container: {_explain(exc)}") from exc
        except APIError as exc:
            if exc.status_code == 409:
                existing = self.find(spec.name)
                if existing is not None:
                    labels = existing["Config"].get("Labels") or {}
                    if all(labels.get(k) == spec.labels[k] for k in (LABEL_EXECUTOR, LABEL_EXECUTION)):
                        return existing["Id"], False
                    raise ContainerCreateError(
                        f"container name {spec.name!r} is taken by another execution's container"
                    ) from exc
            raise _create_error(exc) from exc
        except DockerException as exc:
            raise ContainerCreateError(f"creating the container failed: {exc}") from exc
        except DAEMON_ERRORS as exc:
            raise DaemonError(f"creating the container failed: {_explain(exc)}") from exc

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.inspect_container(name)
        except NotFound:
            return None

    def attach(self, container_id: str, *, logs: bool) -> Attached:
        """Live output of a container, stdout and stderr kept apart.

        Attach before start and nothing is missed without a log replay; attach
        with ``logs`` to an adopted container and its history comes first. Frames
        are read through the HTTP response's own buffer (docker-py reads the raw
        socket and so drops whatever the header parser buffered after the
        headers, i.e. the start of a replay), and with no read timeout, so a
        container silent for an hour is still followed.
        """
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1 if logs else 0}
        url = self.api._url("/containers/{0}/attach", container_id)
        response = self.api.post(url, params=params, headers={"Connection": "Upgrade", "Upgrade": "tcp"}, stream=True)
        self.api._raise_for_status(response)
        return Attached(response)

    def start(self, container_id: str) -> None:
        try:
            self.api.start(container_id)
        except APIError as exc:
            raise _create_error(exc) from exc
        except DAEMON_ERRORS as exc:
            raise DaemonError(f"starting the container failed: {_explain(exc)}") from exc

    def wait(self, container_id: str) -> int:
        """Block until the container stops; its exit code. No timeout on purpose:
        time limits are the handler's, not the HTTP client's."""
        result = self.api.wait(container_id, timeout=None)
        return int(result.get("StatusCode", -1))

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self.api.inspect_container(container_id)

    def stop(self, container_id: str, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, then SIGKILL (docker stop)."""
        try:
            self.api.stop(container_id, timeout=max(0, int(round(grace))))
        except NotFound:
            pass

    def remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    def labelled_containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return self.api.containers(all=True, filters=filters)

    def remove_labelled(self, executor_id: str) -> tuple[list[str], list[str], list[str], list[str]]:
        """Remove every container, network and volume of one executor.

        Returns (containers, networks, volumes, errors)."""
        label = f"{LABEL_EXECUTOR}={executor_id}"
        removed: tuple[list[str], list[str], list[str]] = ([], [], [])
        errors: list[str] = []
        for c in self.labelled_containers({LABEL_EXECUTOR: executor_id}):
            try:
                self.remove(c["Id"])
                removed[0].append(c["Id"])
            except DAEMON_ERRORS as exc:
                errors.append(f"container {c['Id'][:12]}: {exc}")
        for n in self.api.networks(filters={"label": [label]}):
            try:
                self.api.remove_network(n["Id"])
                removed[1].append(n["Id"])
            except DAEMON_ERRORS as exc:
                errors.append(f"network {n['Id'][:12]}: {exc}")
        for v in (self.api.volumes(filters={"label": label}) or {}).get("Volumes") or []:
            try:
                self.api.remove_volume(v["Name"], force=True)
                removed[2].append(v["Name"])
            except DAEMON_ERRORS as exc:
                errors.append(f"volume {v['Name']}: {exc}")
        return removed[0], removed[1], removed[2], errors


class PullHandle:
    """A pull in progress that another thread may cut short (a cancel while pulling)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self.aborted = False
        self.done = threading.Event()

    def attach(self, response: requests.Response) -> None:
        with self._lock:
            self._response = response
            aborted = self.aborted
        if aborted:
            _cut(response)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            response = self._response
        if response is not None:
            _cut(response)


def _cut(response: requests.Response) -> None:
    """Unblock a reader stuck in recv on ``response``, then release it."""
    try:
        sock = getattr(response.raw._fp.fp.raw, "_sock", None)
    except AttributeError:
        sock = None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    try:
        response.close()
    except OSError:
        pass


class Attached:
    """An attach connection: the demultiplexed frames and a way to cut it."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response
        self._fp = response.raw._fp.fp  # the buffered reader the headers were parsed from
        self._sock = getattr(self._fp.raw, "_sock", None)
        if self._sock is not None:
            self._sock.settimeout(None)

    def frames(self) -> Iterator[tuple[str, bytes]]:
        """(stream name, chunk) in arrival order, per Docker's stdcopy framing:
        an 8-byte header (stream id, 3 zero bytes, big-endian length), then data."""
        fp = self._fp
        while True:
            header = fp.read(8)
            if header is None or len(header) < 8:
                return
            stream_id, length = _HEADER.unpack(header)
            name = _STREAM_NAMES.get(stream_id, "stdout")
            while length > 0:
                chunk = fp.read1(min(length, _CHUNK))
                if not chunk:
                    return
                length -= len(chunk)
                yield name, chunk

    def close(self) -> None:
        """Unblock a reader stuck in recv, then release the connection."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._response.close()
        except OSError:
            pass


class ImageMissing(ContainerCreateError):
    """The image is not there (removed since it was last seen): make it present and create again."""


def _env_base_url() -> str | None:
    """The base URL docker-py gives a client made from the environment (as DockerClient() is)."""
    try:
        return docker.APIClient(**docker.utils.kwargs_from_env(), version="1.41").base_url
    except DAEMON_ERRORS:
        return None


def _explain(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _create_error(exc: APIError) -> Exception:
    text = _explain(exc)
    if "could not select device driver" in text:
        return GpuUnavailableError(f"resources.gpus: this Docker daemon cannot provide GPUs ({text})")
    return ContainerCreateError(f"the daemon refused the container: {text}")
