"""docker-compose.yml is valid for Debian's docker-compose and scales the worker."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str) -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is needed (scripts/setup.sh installs it)")
    out = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def services(config: str) -> dict[str, str]:
    """Each service's block of the normalised config, as text (no YAML parser needed)."""
    block = config.split("services:\n", 1)[1]
    parts = re.split(r"^  ([A-Za-z0-9_-]+):\n", block, flags=re.MULTILINE)
    found = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        found[name] = re.split(r"^\S", body, maxsplit=1, flags=re.MULTILINE)[0]
    return found


def test_compose_config_has_redis_worker_dashboard():
    assert sorted(compose("config", "--services").split()) == ["dashboard", "redis", "worker"]
    svc = services(compose("config"))

    assert re.search(r"- --appendonly\n\s+- [\"']?yes", svc["redis"]), svc["redis"]
    worker = svc["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker
    # registry logins: the host's Docker config, read-only, where DOCKER_CONFIG points
    assert re.search(r"- /[^\n]*/\.docker:/etc/dockrq/docker:ro\n", worker), worker
    assert "DOCKER_CONFIG: /etc/dockrq/docker" in worker
    # --scale worker=N needs no fixed name and no host port on the worker
    assert "container_name" not in worker and "ports:" not in worker
    assert "DOCKRQ_REDIS_URL: redis://redis:6379/0" in worker
    assert "condition: service_healthy" in worker
    assert "- --json" in svc["dashboard"] and "- worker.dashboard" in svc["dashboard"]


def test_dockerfile_installs_the_console_scripts():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[dashboard\]"', text)
    assert 'CMD ["dockrq-worker"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
