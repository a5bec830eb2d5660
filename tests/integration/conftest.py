"""Integration-test hooks: the dockerd restart test runs last, whatever the selection order."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "daemon_restart: restarts dockerd (stops every container on the machine); runs last, never in parallel",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable: everything else keeps its order, the daemon restart goes to the end.
    items.sort(key=lambda item: item.get_closest_marker("daemon_restart") is not None)
