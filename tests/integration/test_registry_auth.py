"""Private registries: a worker reads credentials from its Docker config afresh for every pull
(``docker login``/``logout`` count without a restart, credential helpers work), and the
credentials never reach Redis, events, results or the worker's log."""

from __future__ import annotations

import base64
import json
import os
import threading

import pytest
import redis

from schemas import ExecutionStatus
from scripts import registry as reg

REGISTRY_USER, REGISTRY_PASSWORD = reg.DEFAULT_USER, reg.DEFAULT_PASSWORD  # auth_registry's login

pytestmark = pytest.mark.integration


def _pull_and_run(producer, image: str):
    eid = producer.submit({"engine": {"image": image, "cmd": ["cat", "/version"]}, "pull_policy": "always"})
    return producer.wait(eid, timeout=60)


class EventLog:
    """Everything published on the prefix's events topic while the test runs."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message:
                self.messages.append(message["data"].decode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def _everything_in_redis(redis_client, prefix: str) -> str:
    """Every value stored under the prefix and in rq's keys of it, as text."""
    seen = []
    for key in redis_client.scan_iter(count=1000):
        kind = redis_client.type(key)
        if kind == b"string":
            seen.append(repr(redis_client.get(key)))
        elif kind == b"list":
            seen.append(repr(redis_client.lrange(key, 0, -1)))
        elif kind == b"hash":
            seen.append(repr(redis_client.hgetall(key)))
        elif kind == b"stream":
            seen.append(repr(redis_client.xrange(key)))
        elif kind in (b"set", b"zset"):
            seen.append(repr(redis_client.zrange(key, 0, -1) if kind == b"zset" else redis_client.smembers(key)))
    return "\n".join(seen)


def _secrets() -> list[str]:
    auth = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    header = base64.urlsafe_b64encode(
        json.dumps({"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}).encode()
    ).decode()
    return [REGISTRY_PASSWORD, auth, header[:24]]


def test_login_and_logout_count_without_a_restart(
    spawn_worker, producer, auth_registry, registry_images, redis_url, redis_client, tmp_path
):
    image, digest = registry_images(auth_registry, files={"/version": b"private\n"}, login=True)
    config = tmp_path / "docker-config"
    config.mkdir()
    events = EventLog(redis_url, f"{spawn_worker.prefix}:events")
    try:
        worker = spawn_worker(env={"DOCKER_CONFIG": str(config)})  # no login yet

        refused = _pull_and_run(producer, image)
        assert (refused.status, refused.error.code) == (ExecutionStatus.ERROR, "image_pull")
        assert refused.error.message.startswith(f"image {image}: unauthorized: ")
        assert "\n" not in refused.error.message and "http+docker" not in refused.error.message

        # docker login on the worker's host, with the real docker CLI, while the worker runs
        login = reg.docker("login", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, auth_registry, config=config)
        assert "Login Succeeded" in login
        pulled = _pull_and_run(producer, image)
        assert (pulled.status, pulled.result.stdout, pulled.result.image_digest) == (
            ExecutionStatus.SUCCEEDED, "private\n", digest,
        ), pulled

        reg.docker("logout", auth_registry, config=config)
        again = _pull_and_run(producer, image)
        assert (again.status, again.error.code) == (ExecutionStatus.ERROR, "image_pull"), again
        assert "unauthorized" in again.error.message
    finally:
        events.close()

    leaks = {
        "worker log": worker.output(),
        "events": "\n".join(events.messages),
        "redis": _everything_in_redis(redis_client, spawn_worker.prefix),
    }
    assert events.messages, "no events were seen: the leak check would prove nothing"
    for where, text in leaks.items():
        for secret in _secrets():
            assert secret not in text, f"a registry credential is in the {where}"


def test_a_credential_helper_gives_the_login(spawn_worker, producer, auth_registry, registry_images, tmp_path):
    """``credHelpers`` in the Docker config: docker-py runs ``docker-credential-NAME get``."""
    image, _ = registry_images(auth_registry, files={"/version": b"helper\n"}, login=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-dockrqtest"
    asked = tmp_path / "asked"
    secret = json.dumps({"ServerURL": auth_registry, "Username": REGISTRY_USER, "Secret": REGISTRY_PASSWORD})
    helper.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat >> {asked}\necho >> {asked}\necho '{secret}'\n")
    helper.chmod(0o755)
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {auth_registry: "dockrqtest"}}))

    spawn_worker(env={"DOCKER_CONFIG": str(config), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    got = _pull_and_run(producer, image)
    assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "helper\n"), got
    assert auth_registry in asked.read_text()  # the helper was asked for this registry
