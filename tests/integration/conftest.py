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


# -- loopback registries (scripts/registry.py; scripts/setup.sh starts them on :5000 and :5001) ------


def _session_registry(tmp_path_factory, env: str, default_port: int, *, auth: bool):
    """The registry setup.sh started (``env`` names another ``127.0.0.1:PORT``), or, when none
    answers there, one of the session's own on a free port, stopped at the end."""
    import os

    from scripts import registry as reg

    address = os.environ.get(env, f"127.0.0.1:{default_port}")
    host, _, port = address.rpartition(":")
    if reg.answers(host, int(port)):
        yield address
        return
    root = tmp_path_factory.mktemp("registry")
    htpasswd = None
    if auth:
        htpasswd = root / "htpasswd"
        reg.write_htpasswd(htpasswd, REGISTRY_USER, REGISTRY_PASSWORD)
    own = reg.Registry(root / "r", htpasswd=htpasswd)
    own.start()
    try:
        yield own.address
    finally:
        own.stop()


import os as _os

from scripts.registry import DEFAULT_PASSWORD as _DEFAULT_PASSWORD
from scripts.registry import DEFAULT_USER as _DEFAULT_USER

# The login of the private registry (scripts/setup.sh: DOCKRQ_REGISTRY_USER / _PASSWORD).
REGISTRY_USER = _os.environ.get("DOCKRQ_REGISTRY_USER", _DEFAULT_USER)
REGISTRY_PASSWORD = _os.environ.get("DOCKRQ_REGISTRY_PASSWORD", _DEFAULT_PASSWORD)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """``127.0.0.1:PORT`` of a registry without login (DOCKRQ_TEST_REGISTRY, default :5000)."""
    yield from _session_registry(tmp_path_factory, "DOCKRQ_TEST_REGISTRY", 5000, auth=False)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """``127.0.0.1:PORT`` of a registry that wants a login (DOCKRQ_TEST_AUTH_REGISTRY, default :5001)."""
    yield from _session_registry(tmp_path_factory, "DOCKRQ_TEST_AUTH_REGISTRY", 5001, auth=True)


@pytest.fixture
def registry_images(unique, tmp_path):
    """``make(registry, name, files=..., random_layers=..., layer_bytes=..., login=False)``: build an
    image of the test's own (``REGISTRY/t-UNIQUE/NAME:v1``), push it and remove it from the daemon,
    so using it means a real pull; returns (reference, manifest digest). Every image and tag made
    (and pulled) under the test's own repository is removed at teardown."""
    from scripts import registry as reg

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
