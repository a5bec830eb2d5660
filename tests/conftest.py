"""Shared fixtures. Integration tests use the real redis-server and dockerd that
``scripts/setup.sh`` starts; unit tests use fakeredis and never touch Docker."""

from __future__ import annotations

import os
import uuid

import pytest

TEST_IMAGE = os.environ.get("DOCKRQ_TEST_IMAGE", "dockrq-test/busybox:latest")
# A database of its own so the suite never touches data on the default one.
TEST_REDIS_URL = os.environ.get("DOCKRQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def test_image() -> str:
    return TEST_IMAGE


@pytest.fixture
def unique() -> str:
    """A short unique token for ids, queue names and prefixes of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"real Redis needed at {TEST_REDIS_URL} (run scripts/setup.sh): {exc}")
    client.flushdb()
    client.close()
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=None)
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"a running dockerd is needed (run scripts/setup.sh): {exc}")
    yield client
    client.close()


@pytest.fixture
def fake_redis():
    import fakeredis

    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()
