"""Pull faults end cleanly: a cancel during a pull ends ``cancelled`` at once; a registry that
is down, an unknown image, a missing login and a registry that stops answering mid-pull end
``error``/``image_pull`` with one plain line naming the image and the reason; the worker
then takes the next job; two executions pulling one image at once both succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from schemas import ExecutionStatus
from scripts import registry as reg

pytestmark = pytest.mark.integration

MB = 1_000_000


def _dockrq_wait(redis_url: str, spawn_worker, eid: str) -> subprocess.CompletedProcess:
    entry = Path(sys.executable).with_name("dockrq")
    env = {**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_PREFIX": spawn_worker.prefix}
    return subprocess.run([str(entry), "wait", "--timeout", "30", eid], env=env, capture_output=True, text=True,
                          timeout=60)


def _still_works(producer, test_image: str) -> None:
    eid = producer.submit({"engine": {"image": test_image, "cmd": ["echo", "next"]}})
    got = producer.wait(eid, timeout=60)
    assert (got.status, got.result.stdout) == (ExecutionStatus.SUCCEEDED, "next\n"), got


@pytest.fixture
def stalling(registry):
    """``open(stall_after)``: a proxy to the registry that hangs after that many bytes per connection."""
    proxies: list[reg.StallingProxy] = []

    def open_proxy(stall_after: int | None) -> reg.StallingProxy:
        host, _, port = registry.rpartition(":")
        proxy = reg.StallingProxy((host, int(port)), stall_after=stall_after)
        proxies.append(proxy)
        return proxy

    yield open_proxy
    for proxy in proxies:
        proxy.close()


def test_cancel_during_a_pull_ends_cancelled_at_once(
    spawn_worker, producer, registry, registry_images, stalling, redis_url, redis_client, test_image, unique
):
    image, _ = registry_images(registry, random_layers=1, layer_bytes=4 * MB)
    proxy = stalling(stall_after=256 * 1024)  # the layer's download hangs part way
    via_proxy = image.replace(registry, proxy.address, 1)
    worker = spawn_worker()
    eid = producer.submit({"engine": {"image": via_proxy, "cmd": ["true"]}})
    assert proxy.stalled.wait(30), "the pull never reached the stalling registry"
    assert producer.status(eid).state.value == "pulling"

    producer.cancel(eid)
    outcome = producer.wait(eid, timeout=10)  # at once: no pull deadline, no stop grace waited out
    assert outcome.status is ExecutionStatus.CANCELLED, outcome
    assert outcome.error.code == "cancelled" and outcome.result.pull_seconds is not None
    waited = _dockrq_wait(redis_url, spawn_worker, eid)
    assert waited.returncode == 130, waited.stderr

    _still_works(producer, test_image)
    log = worker.output()
    assert "Traceback" not in log and "did not stop" not in log and "worker_error" not in log, log[-4000:]
    failed = FailedJobRegistry(queue=Queue(spawn_worker.queue, connection=redis_client))
    assert failed.get_job_ids() == []


def test_pull_failures_end_image_pull_with_one_line(
    spawn_worker, producer, registry, auth_registry, registry_images, stalling, redis_url, test_image, unique, tmp_path
):
    stalled_image, _ = registry_images(registry, random_layers=1, layer_bytes=4 * MB)
    proxy = stalling(stall_after=256 * 1024)
    no_login = tmp_path / "docker-config"
    no_login.mkdir()
    worker = spawn_worker("--pull-timeout", "3", env={"DOCKER_CONFIG": str(no_login)})
    cases = {
        "registry unreachable": f"127.0.0.1:{reg.free_port()}/t-{unique}/img:v1",
        "not found in the registry": f"{registry}/t-{unique}/no-such-image:v1",
        "unauthorized": f"{auth_registry}/dockrq-test/busybox:latest",
        "pull timed out": stalled_image.replace(registry, proxy.address, 1),
    }
    said: dict[str, str] = {}
    for reason, image in cases.items():
        eid = producer.submit({"engine": {"image": image, "cmd": ["true"]}, "pull_policy": "always"})
        outcome = producer.wait(eid, timeout=30)
        assert (outcome.status, outcome.error.code) == (ExecutionStatus.ERROR, "image_pull"), (reason, outcome)
        message = outcome.error.message
        assert message.startswith(f"image {image}: {reason}"), message
        assert "\n" not in message and "http+docker" not in message and "Server Error" not in message, message
        said[eid] = message
        _still_works(producer, test_image)
    # what `dockrq wait` says of each (the four CLI processes at the same time)
    with ThreadPoolExecutor(len(said)) as pool:
        waits = dict(zip(said, pool.map(lambda eid: _dockrq_wait(redis_url, spawn_worker, eid), said)))
    for eid, message in said.items():
        waited = waits[eid]
        assert (waited.returncode, waited.stderr) == (125, f"dockrq: execution {eid} error: image_pull: {message}\n")
    assert proxy.stalled.is_set()
    log = worker.output()
    assert "Traceback" not in log, log[-4000:]


def test_two_executions_pulling_one_image_at_once_both_succeed(spawn_worker, producer, registry, registry_images):
    image, digest = registry_images(registry, random_layers=2, layer_bytes=4 * MB)
    spawn_worker()
    spawn_worker()
    ids = producer.submit_many(
        [{"engine": {"image": image, "cmd": ["echo", str(i)]}, "pull_policy": "always"} for i in range(2)]
    )
    outcomes = [producer.wait(eid, timeout=60) for eid in ids]
    assert [(o.status, o.result.stdout) for o in outcomes] == [
        (ExecutionStatus.SUCCEEDED, "0\n"), (ExecutionStatus.SUCCEEDED, "1\n"),
    ], outcomes
    assert {o.result.image_digest for o in outcomes} == {digest}
    assert len({producer.status(eid).worker for eid in ids}) == 2  # one each: the two pulls overlapped
