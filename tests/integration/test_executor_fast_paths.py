"""The executor's shortcuts (issue 5) keep its behaviour: a known image is not inspected
again, yet an image removed meanwhile is handled by the pull policy as before; the
daemon's last answer stands in for a ping."""

from __future__ import annotations

import docker
import pytest

from worker.executor import new_executor
from worker.executor.client import DockerClient
from worker.executor.errors import StartError
from worker.executor.executor import DockerExecutor

pytestmark = pytest.mark.integration


@pytest.fixture
def executor(unique):
    ex = new_executor(f"fast-{unique}", stop_grace_seconds=1)
    yield ex
    ex.cleanup()
    ex.close()


@pytest.fixture
def own_tag(docker_client, test_image, unique):
    """A tag of the test image that only this test uses (and removes)."""
    repo, tag = f"dockrq-test/fastpath-{unique}", "1"
    docker_client.images.get(test_image).tag(repo, tag)
    yield f"{repo}:{tag}"
    try:
        docker_client.images.remove(f"{repo}:{tag}")
    except docker.errors.ImageNotFound:
        pass


def _run(executor, eid, image, **extra):
    """Start (a StartError is recorded as the result) and wait."""
    try:
        executor.start({"execution_id": eid, "engine": {"image": image, "cmd": ["echo", "ok"]}, **extra})
    except StartError:
        pass
    return executor.wait(eid).result(60)


def test_a_known_image_is_not_inspected_again(executor, own_tag, monkeypatch):
    assert _run(executor, "first", own_tag).status.value == "succeeded"
    calls = []
    real = executor.client.api.inspect_image
    monkeypatch.setattr(executor.client.api, "inspect_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert _run(executor, "second", own_tag).stdout == "ok\n"
    assert calls == []


@pytest.mark.parametrize("policy", ["never", "if_not_present"])
def test_an_image_removed_since_it_was_seen_goes_by_the_pull_policy(executor, own_tag, docker_client, policy):
    assert _run(executor, "seen", own_tag).status.value == "succeeded"
    docker_client.images.remove(own_tag)
    # never: refused as before; if_not_present: a pull is tried (no registry has it: a pull error)
    result = _run(executor, "gone", own_tag, pull_policy=policy)
    assert (result.status.value, result.error_code) == ("error", "image_pull")


def test_an_image_removed_and_put_back_runs_again(executor, own_tag, docker_client, test_image):
    assert _run(executor, "before", own_tag).status.value == "succeeded"
    docker_client.images.remove(own_tag)
    repo, tag = own_tag.split(":")
    docker_client.images.get(test_image).tag(repo, tag)
    assert _run(executor, "after", own_tag).stdout == "ok\n"


def test_answered_within_follows_the_daemon(executor):
    assert executor.is_installed()
    assert executor.answered_within(5.0)
    assert not executor.answered_within(0.0)
    dead = DockerExecutor("fast-dead", client=DockerClient(docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")))
    try:
        assert not dead.is_installed()
        assert not dead.answered_within(60.0)
    finally:
        dead.close()
