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
from dataclasses import replace
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from .refusals import explain_refusal
from .errors import DAEMON_ERRORS, ContainerCreateError, DaemonError, DockerUnavailableError, GpuUnavailableError, ImagePullError
from .pull import PresentImage, ProgressCallback, PullHandle
from .pull import pull as pull_image
from .spec import LABEL_EXECUTION, LABEL_EXECUTOR, ContainerSpec
from .transport import LeanRequests

log = logging.getLogger(__name__)

# A create that meets Docker's 409 name conflict while the other create is still in flight
# (the name is reserved, the container not yet inspectable) waits this long for it to show.
NAME_CONFLICT_WAIT_SECONDS = 10.0
NAME_CONFLICT_POLL_SECONDS = 0.1

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
        # docker-py's calls to a local socket skip requests' per-call work (worker/executor/transport.py)
        self._lean = LeanRequests.install(self.api)
        # Images this client has seen present (inspected or pulled): an execution of
        # one of them skips the inspect. If one is removed meanwhile, create says so
        # (ImageMissing) and the handler makes it present again and retries.
        self._present: dict[str, PresentImage] = {}
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
        if self._lean is not None:
            self._lean.close()

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
    def ensure_image(
        self, image: str, policy: str, handle: PullHandle | None = None, progress: ProgressCallback | None = None
    ) -> PresentImage:
        """Make ``image`` present according to the pull policy, within the pull deadline
        (worker/executor/pull.py: fresh credentials, progress, one-line errors).

        ``handle.abort()`` from another thread ends a pull in progress (ImagePullError).
        Returns the image's id, registry digest and the pull, if one was made."""
        if policy != "always":
            known = self._present.get(image)
            if known is not None:
                return known
            try:
                present = PresentImage.of(image, self.api.inspect_image(image))
                self._present[image] = present
                return present
            except ImageNotFound:
                if policy == "never":
                    raise ImagePullError(f"image {image}: not present on this host and pull_policy is 'never'") from None
            except DAEMON_ERRORS as exc:
                raise DaemonError(f"inspecting image {image!r} failed: {exc}") from exc
        record = pull_image(self.api, image, timeout=self.pull_timeout, handle=handle, progress=progress)
        try:
            present = PresentImage.of(image, self.api.inspect_image(image), record)
        except DAEMON_ERRORS:  # pulled, yet not found under this name: the digest still says what it is
            present = PresentImage(None, record.digest, record)
        self._present[image] = replace(present, pull=None)
        return present

    # -- containers --------------------------------------------------------------
    def create(self, spec: ContainerSpec) -> tuple[str, bool]:
        """Container id and whether it was created now (False: it already existed).

        On Docker's 409 name conflict the execution's container exists, or another process is
        creating it right now: the daemon reserves the name before the container can be
        inspected (``docker inspect NAME`` answers 404 meanwhile). Its id is returned once it
        can be inspected (within ``NAME_CONFLICT_WAIT_SECONDS``); if the name is freed meanwhile
        (that create failed), the create is made again. Raises ContainerCreateError (the name
        is another execution's, or stays taken by a container the daemon does not show),
        ImageMissing, DaemonError."""
        give_up = time.monotonic() + NAME_CONFLICT_WAIT_SECONDS
        while True:
            try:
                try:
                    return self._create_once(spec), True
                except APIError as exc:
                    if exc.status_code != 409 or isinstance(exc, ImageNotFound):
                        raise
                    existing = self.find(spec.name)
                    if existing is None and time.monotonic() > give_up:
                        raise ContainerCreateError(
                            f"container name {spec.name!r} stays in use by a container the daemon does not show"
                        ) from exc
            except ImageNotFound as exc:
                self._present.pop(spec.image, None)
                raise ImageMissing(f"the daemon refused the container: {_explain(exc)}") from exc
            except APIError as exc:
                raise _create_error(exc) from exc
            except DockerException as exc:
                raise ContainerCreateError(f"creating the container failed: {exc}") from exc
            except DAEMON_ERRORS as exc:
                raise DaemonError(f"creating the container failed: {_explain(exc)}") from exc
            if existing is None:  # being created by someone else: it shows in a moment
                time.sleep(NAME_CONFLICT_POLL_SECONDS)
                continue
            labels = existing["Config"].get("Labels") or {}
            if all(labels.get(k) == spec.labels[k] for k in (LABEL_EXECUTOR, LABEL_EXECUTION)):
                return existing["Id"], False
            raise ContainerCreateError(f"container name {spec.name!r} is taken by another execution's container")

    def _create_once(self, spec: ContainerSpec) -> str:
        """``POST /containers/create?name=...``; the new container's id. Raises docker-py's errors."""
        host_config = self.api.create_host_config(**spec.host_config)
        create = dict(spec.create)
        if create.pop("stdin_once", False):  # docker-py has no argument for it (docker run -i sets it)
            config = self.api.create_container_config(spec.image, host_config=host_config, **create)
            config["StdinOnce"] = True
            created = self.api.create_container_from_config(config, spec.name)
        else:
            created = self.api.create_container(spec.image, name=spec.name, host_config=host_config, **create)
        return created["Id"]

    def find(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.inspect_container(name)
        except NotFound:
            return None

    def attach(self, container_id: str, *, logs: bool, stdin: bool = False) -> Attached:
        """Live output of a container, stdout and stderr kept apart.

        Attach before start and nothing is missed without a log replay; attach
        with ``logs`` to an adopted container and its history comes first. Frames
        are read through the HTTP response's own buffer (docker-py reads the raw
        socket and so drops whatever the header parser buffered after the
        headers, i.e. the start of a replay), and with no read timeout, so a
        container silent for an hour is still followed. With ``stdin`` the connection also
        carries the container's stdin (``Attached.send_stdin``).
        """
        params = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1 if logs else 0, "stdin": 1 if stdin else 0}
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

    def stop(self, container_id: str, grace: float) -> bool:
        """SIGTERM, ``grace`` seconds, then SIGKILL (docker stop). Whether the container was
        still running, i.e. this stop ended it: False when the daemon answers 304 Not
        Modified (it had already exited) or 404 (it is gone). ``APIClient.stop`` minus
        discarding that answer. Daemon failures raise (DAEMON_ERRORS)."""
        timeout = max(0, int(round(grace)))
        conn_timeout = None if self.api.timeout is None else self.api.timeout + timeout
        response = self.api._post(
            self.api._url("/containers/{0}/stop", container_id), params={"t": timeout}, timeout=conn_timeout
        )
        if response.status_code in (304, 404):
            return False
        self.api._raise_for_status(response)
        return True

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

    def send_stdin(self, data: bytes, name: str = "dockrq-stdin") -> None:
        """Write ``data`` to the container's stdin, then close it (EOF), from a thread of its own:
        the daemon takes input only as fast as the container reads it. Attach with ``stdin``."""

        def feed() -> None:
            try:
                if self._sock is not None:
                    self._sock.sendall(data)
                    self._sock.shutdown(socket.SHUT_WR)  # the half-close docker run -i makes at EOF
            except OSError as exc:  # the container ended without reading it all, or we detached
                log.debug("stdin of %s not fully written: %s", name, exc)

        threading.Thread(target=feed, name=name, daemon=True).start()

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
    named = explain_refusal(text)  # a missing user or executable, named (refusals.py)
    return named if named is not None else ContainerCreateError(f"the daemon refused the container: {text}")
