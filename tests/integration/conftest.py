"""Integration-test hooks: the dockerd restart test runs last, whatever the selection order."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "daemon_restart: restarts dockerd (stops every container on the machine); runs last, never in parallel",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable: everything else keeps its order, the daemon restart goes to the end.
    items.sort(key=lambda item: item.get_closest_marker("daemon_restart") is not None)


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
