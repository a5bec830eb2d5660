"""Pull policies against a real registry (Debian's docker-registry on loopback), through real
``dockrq-worker`` processes: what is pulled, when, and what the result records."""

from __future__ import annotations

import pytest

from schemas import ExecutionStatus
from scripts import registry as reg

pytestmark = pytest.mark.integration


def _run(producer, image: str, *, policy: str, cmd=("cat", "/version"), timeout: float = 60):
    eid = producer.submit({"engine": {"image": image, "cmd": list(cmd)}, "pull_policy": policy})
    return producer.wait(eid, timeout=timeout)


def test_if_not_present_pulls_only_when_missing(spawn_worker, producer, registry, registry_images):
    image, digest = registry_images(registry, files={"/version": b"one\n"})
    spawn_worker()
    first = _run(producer, image, policy="if_not_present")
    assert (first.status, first.result.stdout) == (ExecutionStatus.SUCCEEDED, "one\n"), first
    assert first.result.pull_seconds is not None and first.result.pull_seconds > 0
    assert first.result.image_digest == digest  # the manifest digest docker push reported
    assert first.result.image_id.startswith("sha256:") and first.result.queued_seconds is not None

    second = _run(producer, image, policy="if_not_present")
    assert (second.status, second.result.stdout) == (ExecutionStatus.SUCCEEDED, "one\n")
    assert second.result.pull_seconds is None  # present: no pull
    assert (second.result.image_digest, second.result.image_id) == (digest, first.result.image_id)


def test_always_picks_up_a_tag_that_moved(spawn_worker, producer, registry, registry_images):
    image, old = registry_images(registry, files={"/version": b"one\n"}, remove=False)
    old_id = reg.docker("image", "inspect", "-f", "{{.Id}}", image).strip()
    _, new = registry_images(registry, files={"/version": b"two\n"}, remove=False)  # same tag, new content
    reg.docker("tag", old_id, image)  # this host still has the old one under the tag
    spawn_worker()

    stale = _run(producer, image, policy="if_not_present")
    assert (stale.result.stdout, stale.result.pull_seconds, stale.result.image_id) == ("one\n", None, old_id)

    fresh = _run(producer, image, policy="always")
    assert (fresh.status, fresh.result.stdout) == (ExecutionStatus.SUCCEEDED, "two\n"), fresh
    assert fresh.result.pull_seconds is not None and fresh.result.image_digest == new != old


def test_never_never_contacts_a_registry(spawn_worker, producer, registry, registry_images, test_image):
    # An image named after a registry that does not exist (nothing listens on its port):
    # present locally it runs, missing it fails at once; neither tries the registry.
    dead = f"127.0.0.1:{reg.free_port()}"
    image = f"{dead}/t-never/busybox:v1"
    reg.docker("tag", test_image, image)
    try:
        spawn_worker()
        ran = _run(producer, image, policy="never", cmd=("echo", "local"))
        assert (ran.status, ran.result.stdout, ran.result.pull_seconds) == (ExecutionStatus.SUCCEEDED, "local\n", None)
    finally:
        reg.remove_image(image)
    missing = _run(producer, image, policy="never")
    assert (missing.status, missing.error.code) == (ExecutionStatus.ERROR, "image_pull")
    assert missing.error.message == f"image {image}: not present on this host and pull_policy is 'never'"
    assert "unreachable" not in missing.error.message


@pytest.mark.parametrize("form", ["repo@digest", "repo:tag@digest"])
def test_digest_pins_run_exactly_that_image(spawn_worker, producer, registry, registry_images, form):
    image, pinned = registry_images(registry, files={"/version": b"pinned\n"})
    registry_images(registry, files={"/version": b"moved\n"})  # the tag moves on in the registry
    repo = image.rsplit(":", 1)[0]
    reference = f"{repo}@{pinned}" if form == "repo@digest" else f"{image}@{pinned}"
    assert reference.startswith("127.0.0.1:") and reference.count(":") == (2 if form == "repo@digest" else 3)
    spawn_worker()
    for policy in ("if_not_present", "always"):
        got = _run(producer, reference, policy=policy)
        assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "pinned\n"), got
        assert got.result.image_digest == pinned
    assert got.result.pull_seconds is not None  # always: pulled (again), by digest
