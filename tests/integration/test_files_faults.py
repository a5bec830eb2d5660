"""Files when a worker dies: the adopter of a running container collects its outputs, and a
re-run on another node gets the inputs again (they stay in Redis for the retention)."""

from __future__ import annotations


import pytest

from schemas import ExecutionStatus
from scripts.faults import FAST_REAP_ENV
from polling import wait_until

pytestmark = pytest.mark.integration


def _request(unique, name, script, **fields):
    return {"execution_id": f"{name}-{unique}", "engine": {"image": "dockrq-test/busybox:latest", "cmd": ["sh", "-c", script]},
            **fields}


def test_adopter_collects_the_outputs_of_the_container_it_adopted(spawn_worker, producer, unique, tmp_path):
    first = spawn_worker(env=FAST_REAP_ENV)
    script = "mkdir /out && cp /in/f /out/copy && sleep 3 && echo late > /out/late"
    eid = producer.submit(_request(unique, "adopt-files", script, outputs=["/out"]), inputs={"/in/f": b"given"})
    wait_until(lambda: producer.status(eid).state.value == "running", 30, "running")
    first.kill()  # SIGKILL: the container keeps running
    second = spawn_worker(env=FAST_REAP_ENV)  # same executor id: adopts it
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert "adopting container" in second.output()
    assert [f.path for f in outcome.result.output_files] == ["/out", "/out/copy", "/out/late"]
    producer.outputs(eid, tmp_path)
    assert (tmp_path / "out/copy").read_text() == "given" and (tmp_path / "out/late").read_text() == "late\n"


def test_a_rerun_after_a_lost_worker_gets_its_inputs_again(spawn_worker, producer, unique, docker_client):
    doomed = spawn_worker(env=FAST_REAP_ENV)
    eid = producer.submit(
        _request(unique, "rerun-files", "cat /in/f; sleep 3; mkdir /out; echo run > /out/r", outputs=["/out"], retries=1),
        inputs={"/in/f": b"input\n"},
    )
    wait_until(lambda: producer.status(eid).state.value == "running", 30, "running")
    # Another node (same daemon, other executor id): it reaps and re-enqueues, then runs it afresh.
    spawn_worker("--executor-id", f"{spawn_worker.executor_id}-b", env=FAST_REAP_ENV)
    doomed.kill()
    try:
        outcome = producer.wait(eid, timeout=90)
        assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "input\n"), outcome
        assert [f.path for f in outcome.result.output_files] == ["/out", "/out/r"]
    finally:
        for c in docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={spawn_worker.executor_id}-b"}):
            c.remove(force=True)
