"""Image pulls: registry credentials read afresh, progress, a deadline, a clean error.

What docker-py's ``APIClient.pull`` does not do for a long-running worker:

* **Credentials.** docker-py reads the Docker config (``$DOCKER_CONFIG/config.json``
  or ``~/.docker/config.json``) once, when the client is made, and keeps it; a
  ``docker login``/``logout`` on the worker's host would need a restart. Here
  each pull loads it again (``docker.auth.load_config``) and resolves the
  registry's entry with docker-py's own rules, credential helpers
  (``credHelpers``/``credsStore``) included. The encoded ``X-Registry-Auth``
  header goes to the daemon only; it is never logged, stored or published.
* **Progress.** The daemon's JSON progress stream (``Pulling fs layer``,
  ``Downloading`` with ``progressDetail``, ``Pull complete``, ``Already exists``,
  ``Digest: ...``) is tallied into layers and bytes and handed to a callback at
  most ``PROGRESS_INTERVAL`` apart, plus once at the end.
* **Deadline and cancel.** The request runs in a thread of its own: the caller
  stops waiting when the deadline passes or the execution is stopped, and the
  daemon's connection is cut (dockerd then cancels the pull it was serving).
* **Errors.** One plain line naming the image and the reason (registry
  unreachable, not found, unauthorized, timed out), the daemon's own words
  after it; never docker-py's ``500 Server Error for http+docker://...``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker.auth
import requests
import urllib3.exceptions
from docker.errors import APIError
from docker.utils import parse_repository_tag

from .errors import DAEMON_ERRORS, ImagePullError

log = logging.getLogger(__name__)

# Progress reaches the callback at most this often (seconds), plus once when the pull ends.
PROGRESS_INTERVAL = 0.25
_PULL_FAILURES = (*DAEMON_ERRORS, urllib3.exceptions.HTTPError)
_LAYER_DONE = {"Pull complete", "Already exists"}
_LAYER_DOWNLOADED = {"Download complete", "Verifying Checksum", "Extracting", "Pull complete"}


@dataclass(frozen=True)
class PullProgress:
    """How far one pull is: layers (done of total seen so far) and compressed bytes
    downloaded of the total announced so far (a layer's size is known once its
    download starts). ``done``: the last report of this pull."""

    image: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    done: bool = False


ProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True)
class PullRecord:
    """One pull that happened: how long it took (s), the compressed bytes it
    downloaded, its layers, and the manifest digest the registry gave (``sha256:...``)."""

    image: str
    seconds: float
    bytes_downloaded: int
    layers: int
    digest: str | None


@dataclass(frozen=True)
class PresentImage:
    """An image made present for an execution: its local id (``sha256:...``), its
    registry digest (None for an image never pulled or pushed) and the pull, if one was made."""

    id: str | None
    digest: str | None
    pull: PullRecord | None = None

    @classmethod
    def of(cls, image: str, inspected: dict[str, Any], pull: PullRecord | None = None) -> PresentImage:
        return cls(inspected.get("Id"), image_digest(image, inspected) or (pull.digest if pull else None), pull)


@dataclass
class _Layer:
    current: int = 0
    total: int = 0
    done: bool = False


@dataclass
class _Tally:
    """The daemon's pull messages, summed up."""

    image: str
    layers: dict[str, _Layer] = field(default_factory=dict)
    digest: str | None = None
    finished: bool = False  # the daemon's closing "Status: ..." line was seen

    def add(self, message: dict[str, Any]) -> None:
        status = str(message.get("status") or "")
        if status.startswith("Status: "):
            self.finished = True
            return
        if status.startswith("Digest: "):
            self.digest = status[len("Digest: "):].strip()
            return
        layer_id = message.get("id")
        if not layer_id or status.startswith(("Pulling from", "Pulling repository")) or ":" in str(layer_id):
            return  # the first line's id is the tag, not a layer
        layer = self.layers.setdefault(str(layer_id), _Layer())
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            layer.total = int(detail.get("total") or layer.total)
            layer.current = min(int(detail.get("current") or 0), layer.total or 1 << 62)
        elif status in _LAYER_DOWNLOADED:
            layer.current = layer.total
        if status in _LAYER_DONE:
            layer.done = True

    def progress(self, *, done: bool = False) -> PullProgress:
        layers = self.layers.values()
        return PullProgress(
            image=self.image,
            layers_done=sum(1 for layer in layers if layer.done),
            layers_total=len(self.layers),
            bytes_done=sum(layer.current for layer in layers),
            bytes_total=sum(layer.total for layer in layers),
            done=done,
        )


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
            cut_response(response)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            response = self._response
        if response is not None:
            cut_response(response)


def cut_response(response: requests.Response) -> None:
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


def registry_auth_header(api: Any, image: str) -> str | None:
    """``X-Registry-Auth`` for ``image``'s registry from the Docker config as it is *now*
    (``DOCKER_CONFIG`` or ``~/.docker/config.json``, credential helpers included), or None.

    docker-py's ``get_config_header`` would reuse the config loaded when the client was
    made; this reads it again, so a ``docker login``/``logout`` counts from the next pull.
    A config or helper that cannot be read counts as no credentials (an anonymous pull).
    """
    repository, _ = parse_repository_tag(image)
    try:
        registry, _ = docker.auth.resolve_repository_name(repository)
        credstore_env = getattr(api, "credstore_env", None)
        config = docker.auth.load_config(credstore_env=credstore_env)
        auth = config.resolve_authconfig(registry)
    except Exception as exc:  # noqa: BLE001 - a broken config must not kill the pull, nor leak into logs
        log.warning("registry credentials for %s could not be read (%s); pulling without", image, type(exc).__name__)
        return None
    return docker.auth.encode_header(auth) if auth else None


def pull(
    api: Any, image: str, *, timeout: float, handle: PullHandle | None = None, progress: ProgressCallback | None = None
) -> PullRecord:
    """Pull ``image`` (``repo[:tag]``, ``repo@digest`` or ``repo:tag@digest``) within ``timeout`` seconds.

    ``handle.abort()`` from another thread ends it at once. Raises ImagePullError
    with one line naming the image and the reason.
    """
    handle = handle or PullHandle()
    tally = _Tally(image)
    started = time.monotonic()
    deadline = started + timeout
    timed_out = f"image {image}: pull timed out: no complete image after {timeout:g} s (pull timeout)"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _stream(api, image, handle, tally, progress, deadline, timed_out)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failure.append(exc)
        finally:
            handle.done.set()

    threading.Thread(target=run, name="dockrq-pull", daemon=True).start()
    # The daemon may hold the response headers back until the registry answers, so the
    # request itself can block: the caller stops waiting for it on abort or deadline.
    while not handle.done.wait(0.1):
        if handle.aborted:
            break
        if time.monotonic() > deadline:
            handle.abort()
            raise ImagePullError(timed_out)
    if handle.aborted:  # whatever the cut connection raised in the pull thread
        raise ImagePullError(f"image {image}: pull cut short: the execution was stopped")
    if failure:
        exc = failure[0]
        if isinstance(exc, ImagePullError):
            raise exc
        if isinstance(exc, urllib3.exceptions.HTTPError):
            # the daemon's connection broke mid-stream: told apart from a refusal as the
            # handler does (requests' ConnectionError), so a daemon restart gets its retry
            lost = requests.exceptions.ConnectionError(f"{type(exc).__name__}: {exc}")
            raise ImagePullError(f"image {image}: {describe_pull_failure(lost)}") from lost
        if isinstance(exc, _PULL_FAILURES):
            raise ImagePullError(f"image {image}: {describe_pull_failure(exc)}") from exc
        raise exc
    record = PullRecord(image, time.monotonic() - started, tally.progress().bytes_done, len(tally.layers), tally.digest)
    if progress is not None:
        progress(tally.progress(done=True))
    return record


def _stream(
    api: Any, image: str, handle: PullHandle, tally: _Tally, progress: ProgressCallback | None, deadline: float,
    timed_out: str,
) -> None:
    repository, tag = parse_repository_tag(image)
    headers = {}
    auth = registry_auth_header(api, image)
    if auth:
        headers["X-Registry-Auth"] = auth
    # APIClient.pull(stream=True) minus the generator, so the response can be cut from another thread.
    response = api._post(
        api._url("/images/create"), params={"fromImage": repository, "tag": tag or "latest"}, headers=headers,
        stream=True, timeout=None,
    )
    handle.attach(response)
    api._raise_for_status(response)
    reported = 0.0
    for message in api._stream_helper(response, decode=True):
        if handle.aborted:
            return
        if "error" in message:
            raise ImagePullError(f"image {image}: {describe_reason(str(message.get('error') or ''))}")
        tally.add(message)
        now = time.monotonic()
        if progress is not None and now - reported >= PROGRESS_INTERVAL:
            reported = now
            progress(tally.progress())
        if now > deadline:
            raise ImagePullError(timed_out)
    if not tally.finished and not handle.aborted:
        lost = requests.exceptions.ConnectionError("the Docker daemon ended the pull stream early")
        raise ImagePullError(f"image {image}: the pull ended without a result: {lost}") from lost


def describe_pull_failure(exc: BaseException) -> str:
    """The reason of a failed pull request, without docker-py's HTTP framing."""
    if isinstance(exc, APIError):
        return describe_reason(str(exc.explanation or "").strip() or f"the daemon answered {exc.status_code}")
    return f"the Docker daemon connection failed: {type(exc).__name__}"


def describe_reason(text: str) -> str:
    """``registry unreachable``/``not found``/``unauthorized`` and the daemon's words, on one line."""
    text = " ".join(text.split())
    lower = text.lower()
    if any(s in lower for s in ("unauthorized", "authentication required", "no basic auth credentials", "denied")):
        return f"unauthorized: no valid login for this registry in the worker's Docker config (docker login): {text}"
    if any(s in lower for s in ("manifest unknown", "not found", "does not exist", "name unknown")):
        return f"not found in the registry: {text}"
    if any(s in lower for s in ("connection refused", "no such host", "dial tcp", "i/o timeout", "connection reset")):
        return f"registry unreachable: {text}"
    return text or "the pull failed without a reason"


def image_digest(image: str, inspected: dict[str, Any]) -> str | None:
    """The registry digest of ``image`` as the daemon has it: the pinned digest of
    ``repo@sha256:...``, else the RepoDigest of its repository, else None (never pushed)."""
    repository, tag = parse_repository_tag(image)
    if tag and tag.startswith("sha256:"):
        return tag
    want = _repo_key(repository)
    for repo_digest in inspected.get("RepoDigests") or ():
        repo, _, digest = str(repo_digest).partition("@")
        if digest and _repo_key(repo) == want:
            return digest
    return None


def _repo_key(repository: str) -> tuple[str, str]:
    repo, _ = parse_repository_tag(repository)  # drops a tag written before a digest
    try:
        registry, path = docker.auth.resolve_repository_name(repo)
    except Exception:  # noqa: BLE001 - an odd name just matches nothing
        return ("", repo)
    if registry == docker.auth.INDEX_NAME and "/" not in path:
        path = f"library/{path}"
    return registry, path
