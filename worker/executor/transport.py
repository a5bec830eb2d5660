"""docker-py's HTTP calls to a local daemon socket, without requests' per-call work.

docker-py's ``APIClient`` is a ``requests.Session``: every Docker call goes through
``Session.request`` (settings merged, the request prepared, cookies, hooks) and
docker-py's ``UnixHTTPAdapter``, which keys its connection pools by the *whole
URL*, so each container-specific call (``/containers/ID/start``, ``/wait``,
``/json``, ``DELETE``...) builds a new urllib3 pool, opens a new socket, and
evicts and closes an older pool. Measured on the worker (issue 14, BENCHMARKS.md
"Worker CPU per execution: where it goes"): about 2 ms of CPU per Docker call,
over half of the worker's CPU per execution.

``LeanRequests.install(api)`` replaces the session's ``request`` on that one
client with a direct ``urlopen`` on **one** urllib3 pool of docker-py's own
``UnixHTTPConnectionPool`` (kept-alive connections to the daemon's socket), for
the calls docker-py makes with plain arguments (a URL under the client's base
URL, params, a ``str``/``bytes`` body or none, headers, a timeout, ``stream``).
The answer is a ``requests.Response`` built as requests' ``HTTPAdapter.build_response``
builds it, urllib3's errors are mapped as ``HTTPAdapter.send`` maps them, and the
session's response hooks run, so docker-py (its ``_result``, ``_raise_for_status``,
``create_api_error_from_http_exception``, attach's raw socket) sees what it
always saw. Anything else (files, ``json=``, auth, cookies, proxies, a streamed
upload body) goes to ``requests.Session.request`` unchanged, as does every call of
a client on TCP/TLS/SSH/npipe (``install`` leaves those alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import docker
import requests
from docker.transport.unixconn import UnixHTTPAdapter, UnixHTTPConnectionPool
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, InvalidHeader, ReadTimeout, RetryError, SSLError
from requests.models import RequestEncodingMixin
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    HTTPError,
    InvalidHeader as Urllib3InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import Timeout

log = logging.getLogger(__name__)

#: Connections kept to the daemon's socket (at least; docker-py's max_pool_size if larger).
POOL_SIZE = 64
_PLAIN_BODY = (str, bytes, type(None))
# Session.request's keywords the lean path takes; any other one given (not None) goes to requests.
_HANDLED = frozenset({"params", "data", "headers", "timeout", "stream", "allow_redirects"})


class LeanRequests:
    """``Session.request`` for one docker-py ``APIClient`` on a unix socket; see the module docstring."""

    def __init__(self, api: docker.APIClient, adapter: UnixHTTPAdapter) -> None:
        self.api = api
        self.base = f"{api.base_url}/"
        # Long requests hold a connection each (every execution's wait and attach, the OOM watcher's
        # events): room for many executions at once before urllib3 would discard (and warn about)
        # connections it has no place for; idle ones are only those a burst left open.
        self.pool = UnixHTTPConnectionPool(api.base_url, adapter.socket_path, adapter.timeout,
                                           maxsize=max(adapter.max_pool_size, POOL_SIZE))
        self.retries = adapter.max_retries  # requests' default: Retry(0, read=False), as the adapter sends
        self._session_request: Callable[..., requests.Response] = type(api).request.__get__(api)

    @classmethod
    def install(cls, api: Any) -> LeanRequests | None:
        """Route ``api``'s plain calls through one kept-alive pool; None (nothing changed) unless
        ``api`` is a docker-py ``APIClient`` on a unix socket with requests' environment off
        (``trust_env`` False: no proxy or netrc lookups, which the lean path would skip)."""
        if not isinstance(api, docker.APIClient) or getattr(api, "trust_env", True):
            return None
        adapter = getattr(api, "_custom_adapter", None)
        if type(adapter) is not UnixHTTPAdapter or api.base_url != "http+docker://localhost":
            return None
        lean = cls(api, adapter)
        api.request = lean.request  # instance attribute: get/post/delete/put of this client only
        return lean

    def close(self) -> None:
        self.pool.close()

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """``requests.Session.request``'s signature and result (see the module docstring)."""
        if (
            not isinstance(url, str) or not url.startswith(self.base)
            or any(v is not None for k, v in kwargs.items() if k not in _HANDLED)
            or not isinstance(kwargs.get("data"), _PLAIN_BODY)
            or kwargs.get("allow_redirects") is False
        ):
            return self._session_request(method, url, **kwargs)
        return self._send(method.upper(), url, kwargs.get("params"), kwargs.get("data"), kwargs.get("headers"),
                          kwargs.get("timeout"), bool(kwargs.get("stream")))

    def _send(
        self, method: str, url: str, params: Any, data: str | bytes | None, headers: Mapping[str, Any] | None,
        timeout: Any, stream: bool,
    ) -> requests.Response:
        if params:
            query = RequestEncodingMixin._encode_params(params)  # requests' own encoding of params
            if query:
                url = f"{url}&{query}" if "?" in url else f"{url}?{query}"
        sent = dict(self.api.headers)  # the session's headers, then the call's (None removes one)
        if headers:
            for name, value in headers.items():
                if value is None:
                    sent.pop(name, None)
                else:
                    sent[name] = value
        body = data.encode("utf-8") if isinstance(data, str) else data
        if body is None and method not in ("GET", "HEAD"):
            sent["Content-Length"] = "0"  # as requests' prepare_content_length
        if isinstance(timeout, tuple):
            timeout = Timeout(connect=timeout[0], read=timeout[1])
        elif not isinstance(timeout, Timeout):
            timeout = Timeout(connect=timeout, read=timeout)
        try:
            raw = self.pool.urlopen(
                method, url[len(self.base) - 1:], body=body, headers=sent, redirect=False, assert_same_host=False,
                preload_content=not stream, decode_content=not stream, retries=self.retries, timeout=timeout,
            )
        except (ProtocolError, OSError) as exc:  # the mapping of requests' HTTPAdapter.send
            raise RequestsConnectionError(exc) from exc
        except MaxRetryError as exc:
            if isinstance(exc.reason, ConnectTimeoutError) and not isinstance(exc.reason, NewConnectionError):
                raise ConnectTimeout(exc) from exc
            if isinstance(exc.reason, ResponseError):
                raise RetryError(exc) from exc
            raise RequestsConnectionError(exc) from exc
        except ClosedPoolError as exc:
            raise RequestsConnectionError(exc) from exc
        except (Urllib3SSLError, HTTPError) as exc:
            if isinstance(exc, Urllib3SSLError):
                raise SSLError(exc) from exc
            if isinstance(exc, ReadTimeoutError):
                raise ReadTimeout(exc) from exc
            if isinstance(exc, Urllib3InvalidHeader):
                raise InvalidHeader(exc) from exc
            raise
        response = requests.Response()  # as requests' HTTPAdapter.build_response
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = raw.reason
        response.url = url
        if not stream:  # read whole, as Session.send does for stream=False
            response._content = raw.data
            response._content_consumed = True
        for hook in self.api.hooks.get("response", ()):
            returned = hook(response)
            if returned is not None:
                response = returned
        return response
