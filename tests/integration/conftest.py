"""Integration-test hooks: the dockerd restart test runs last, whatever the selection order; the
session's loopback registries (started on demand, stopped at the end of the session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts import registry as reg


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "daemon_restart: restarts dockerd (stops every container on the machine); runs last, never in parallel",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable: everything else keeps its order, the daemon restart goes to the end.
    items.sort(key=lambda item: item.get_closest_marker("daemon_restart") is not None)


# -- loopback registries (scripts/registry.py) ---------------------------------------------------
# scripts/setup.sh only installs docker-registry; the session starts the registries its tests ask
# for, on free loopback ports (or DOCKRQ_TEST_REGISTRY_PORT / DOCKRQ_TEST_AUTH_REGISTRY_PORT),
# pushes the test image to each, and stops them when the session ends: no docker-registry remains.

# The private registry's login (a test credential on loopback).
REGISTRY_USER, REGISTRY_PASSWORD = reg.DEFAULT_USER, reg.DEFAULT_PASSWORD


def _session_registry(tmp_path_factory, port_env: str, *, auth: bool):
    """Start a registry of the session's own (with a bcrypt htpasswd login when ``auth``), push
    the test image to it, yield ``127.0.0.1:PORT``, stop it at the end of the session."""
    image = os.environ.get("DOCKRQ_TEST_IMAGE", reg.TEST_IMAGE)  # as tests/conftest.py
    root = tmp_path_factory.mktemp("registry")
    htpasswd = None
    if auth:
        htpasswd = root / "htpasswd"
        reg.write_htpasswd(htpasswd, REGISTRY_USER, REGISTRY_PASSWORD)
    own = reg.Registry(root / "r", int(os.environ.get(port_env) or 0) or None, htpasswd=htpasswd)
    own.start()
    try:
        reg.push_image(image, own.address, user=REGISTRY_USER if auth else None, password=REGISTRY_PASSWORD)
        yield own.address
    finally:
        own.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """``127.0.0.1:PORT`` of the session's registry without login, the test image pushed to it."""
    yield from _session_registry(tmp_path_factory, "DOCKRQ_TEST_REGISTRY_PORT", auth=False)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """``127.0.0.1:PORT`` of the session's registry that wants a login (``REGISTRY_USER`` /
    ``REGISTRY_PASSWORD``), the test image pushed to it."""
    yield from _session_registry(tmp_path_factory, "DOCKRQ_TEST_AUTH_REGISTRY_PORT", auth=True)


@pytest.fixture
def registry_images(unique, tmp_path):
    """``make(registry, name, files=..., random_layers=..., layer_bytes=..., login=False)``: build an
    image of the test's own (``REGISTRY/t-UNIQUE/NAME:v1``), push it and remove it from the daemon,
    so using it means a real pull; returns (reference, manifest digest). Every image and tag made
    (and pulled) under the test's own repository is removed at teardown."""

    made: list[str] = []
    login_dir = tmp_path / "push-login"

    def make(registry: str, name: str = "img", *, tag: str = "v1", login: bool = False, remove: bool = True,
             **build) -> tuple[str, str]:
        ref = f"{registry}/t-{unique}/{name}:{tag}"
        reg.build_image(ref, **build)
        made.append(ref)
        if login:
            reg.write_login(login_dir, registry, REGISTRY_USER, REGISTRY_PASSWORD)
        return ref, reg.push(ref, config=login_dir if login else None, remove=remove)

    yield make
    import subprocess

    listed = subprocess.run(
        ["docker", "images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}}"],
        capture_output=True, text=True,
    ).stdout.split("\n")
    for line in listed:
        parts = line.split()
        if len(parts) == 4 and f"/t-{unique}/" in parts[0]:
            repo, tag, digest, image_id = parts
            if tag != "<none>":
                reg.remove_image(f"{repo}:{tag}")
            if digest != "<none>":
                reg.remove_image(f"{repo}@{digest}")
    for ref in made:
        reg.remove_image(ref)


@pytest.fixture
def docker_node(test_image):
    """``start()`` -> a DockerNode (scripts/docker_node.py): a second dockerd of its own, the test
    image loaded. Its workers choose it with ``env=node.env`` (``DOCKER_HOST``) and an executor id
    of their own. At teardown every node is stopped and removed, and nothing of it may remain
    running (dockerd, containerd, shims)."""
    from scripts.docker_node import DockerNode

    nodes: list[DockerNode] = []
    # The main daemon's bridge: a node's dockerd (--bridge=none) must never delete it (it runs
    # in a network namespace of its own).
    bridge = Path("/sys/class/net/docker0")
    had_bridge = bridge.exists()

    def start() -> DockerNode:
        node = DockerNode()
        nodes.append(node)
        node.start()
        node.load_image(test_image)
        assert bridge.exists() or not had_bridge, "starting a docker node deleted the host's docker0"
        return node

    yield start
    for node in nodes:
        node.stop()
    strays = {str(node.root): node.strays() for node in nodes if node.strays()}
    assert not strays, f"processes of a stopped docker node are still running: {strays}"
    assert bridge.exists() or not had_bridge, "a docker node's start/stop deleted the host's docker0"
