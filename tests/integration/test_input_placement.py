"""Inputs and outputs against tmpfs, bind mounts and --read-only, and input paths the image cannot
take, on a real dockrq-worker, Redis and dockerd: what Docker would lose or refuse is refused at
submit (by the CLI, the Producer and the worker alike); what Docker takes (a read-only container's
inputs into a writable bind mount) runs; the daemon's put-archive refusals end with a named reason."""

from __future__ import annotations

import uuid

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from producer import InvalidRequest
from schemas import JOB_FUNCTION, ExecutionStatus

from dockrq_cli import dockrq, dockrq_at_once

pytestmark = pytest.mark.integration


def req(image, name, script, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", script]}, **fields}


def test_cli_refuses_inputs_and_outputs_under_a_tmpfs_before_writing(redis_url, spawn_worker, test_image, tmp_path):
    worker = spawn_worker(ready=False)  # it starts while the CLI refuses
    (tmp_path / "x").write_text("x\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    client = redis.Redis.from_url(redis_url)
    refusals = (
        (["--input", f"{tmp_path / 'etc'}:/etc"], "inputs"),  # Docker writes /etc/resolv.conf at start
        (["--tmpfs", "/scratch/", "--input", f"{tmp_path / 'x'}:/scratch/x"], "inputs"),
        (["--tmpfs", "/scratch", "--output", "/scratch"], "outputs"),
        (["--read-only", "--input", f"{tmp_path / 'x'}:/in/x"], "inputs"),
    )
    refused = dockrq_at_once(redis_url, spawn_worker, *((("submit", *args, test_image, "true"), {}) for args, _ in refusals))
    for (args, field), got in zip(refusals, refused, strict=True):
        assert got.returncode != 0 and got.stdout == ""
        assert got.stderr.count("\n") == 1 and f"{field}: " in got.stderr, got.stderr
        assert "Traceback" not in got.stderr
    assert client.keys(f"{spawn_worker.prefix}:*") == [] and client.llen(f"rq:queue:{spawn_worker.queue}") == 0
    spawn_worker.ready(1, [worker])
    # Beside the tmpfs (/scratch2 is not under /scratch) the input arrives and the tmpfs is there.
    got = dockrq(redis_url, spawn_worker, "submit", "--tmpfs", "/scratch", "--input", f"{tmp_path / 'x'}:/scratch2/x",
                 test_image, "sh", "-c", "cat /scratch2/x && grep -c ' /scratch tmpfs' /proc/mounts")
    assert (got.returncode, got.stdout) == (0, "x\n1\n"), got.stderr


def test_the_worker_refuses_what_an_older_producer_enqueued_under_a_tmpfs(redis_url, spawn_worker, producer, test_image):
    spawn_worker()
    client = redis.Redis.from_url(redis_url)
    queue = Queue(spawn_worker.queue, connection=client, serializer=JSONSerializer)
    raw = req(test_image, "raw-out", "echo ran", tmpfs=[{"target": "/scratch"}], outputs=["/scratch/out"])
    queue.enqueue_call(JOB_FUNCTION, args=(raw,), job_id=raw["execution_id"])  # past the producer's check
    got = producer.wait(raw["execution_id"], timeout=30)
    assert (got.status, got.error.code, got.result) == (ExecutionStatus.REJECTED, "invalid_request", None)
    assert got.error.message.startswith("outputs: ") and "/scratch/out is at or under tmpfs /scratch" in got.error.message


def test_read_only_container_takes_inputs_into_its_writable_bind_mounts(producer, spawn_worker, test_image, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    spawn_worker(env={"DOCKRQ_ALLOWED_MOUNT_ROOTS": str(tmp_path)})
    mounts = [
        {"source": str(tmp_path / "data"), "target": "/data", "read_only": False},
        {"source": str(tmp_path / "other"), "target": "/other/", "read_only": False},
    ]
    request = req(test_image, "ro-in", "cat /data/in/a.txt /data/b /other/c && touch /x 2>/dev/null || echo rootfs read-only",
                  read_only=True, mounts=mounts)
    eid = producer.submit(request, inputs={"/data/in/a.txt": b"alpha\n", "/data/b": b"beta\n", "/other/c": b"gamma\n"})
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert outcome.result.stdout == "alpha\nbeta\ngamma\nrootfs read-only\n"
    assert (tmp_path / "data" / "in" / "a.txt").read_bytes() == b"alpha\n"  # in the bind mount's source
    # Into a read-only bind mount or onto the read-only rootfs: refused at submit, nothing written.
    with pytest.raises(InvalidRequest, match=r"^inputs: .*/ref/x is inside the read-only bind mount mounts.0 \(/ref\)"):
        producer.submit(req(test_image, "ro-ref", "true", mounts=[{"source": str(tmp_path / "data"), "target": "/ref"}]),
                        inputs={"/ref/x": b"x"})
    with pytest.raises(InvalidRequest, match=r"^inputs: .*/in/x is on the read-only root filesystem"):
        producer.submit(req(test_image, "ro-root", "true", read_only=True, mounts=mounts), inputs={"/in/x": b"x"})


@pytest.mark.parametrize(
    "path, why",
    [
        ("/etc/mtab/x", "/etc/mtab/x: no such file or directory"),  # /etc/mtab -> /proc/mounts, not there before start
        ("/bin/sh/x", "/bin/sh/x: not a directory"),  # /bin/sh is a file (a symlink to busybox)
    ],
)
def test_an_input_path_the_image_cannot_take_ends_input_path_invalid(
    producer, spawn_worker, test_image, docker_client, path, why
):
    spawn_worker()
    eid = producer.submit(req(test_image, "badpath", "echo ran"), inputs={path: b"x"})
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.error.code) == (ExecutionStatus.ERROR, "input_path_invalid"), outcome
    message = outcome.error.message
    assert message.startswith(f"inputs: {path} cannot be put into the container: {why}") and "\n" not in message
    assert outcome.result is None or outcome.result.stdout == ""  # never started
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"}) == []


def test_a_writable_bind_inside_a_read_only_one_is_refused_at_submit_read_only_or_not(
    redis_url, spawn_worker, test_image, tmp_path
):
    """A new user's trial: without --read-only it was accepted, then ended input_path_read_only naming
    the daemon's overlay path (dockerd 20.10: mkdir .../merged/r/w: read-only file system), or the
    file was lost without an error when the read-only source held the mount point."""
    for name in ("b2", "robind", "robind/w"):
        (tmp_path / name).mkdir()
    (tmp_path / "pw.txt").write_text("x\n")
    worker = spawn_worker(env={"DOCKRQ_ALLOWED_MOUNT_ROOTS": str(tmp_path)}, ready=False)
    layout = ("-v", f"{tmp_path / 'b2'}:/r/w:rw", "-v", f"{tmp_path / 'robind'}:/r:ro",
              "--input", f"{tmp_path / 'pw.txt'}:/r/w/z")
    refused = dockrq_at_once(redis_url, spawn_worker, *((("submit", *flags, *layout, test_image, "true"), {})
                                                          for flags in ((), ("--read-only",))))
    for got in refused:
        assert got.returncode == 125 and got.stdout == "", got
        assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr
        assert "inputs: /r/w/z is inside mounts.0 (/r/w), itself inside the read-only bind mount mounts.1 (/r)" in got.stderr
    client = redis.Redis.from_url(redis_url)
    assert client.keys(f"{spawn_worker.prefix}:*") == [] and client.llen(f"rq:queue:{spawn_worker.queue}") == 0
    spawn_worker.ready(1, [worker])
    # Beside the read-only one, the same input arrives in the writable bind mount.
    got = dockrq(redis_url, spawn_worker, "submit", "-v", f"{tmp_path / 'b2'}:/w:rw", "-v",
                 f"{tmp_path / 'robind'}:/r:ro", "--input", f"{tmp_path / 'pw.txt'}:/w/z", test_image, "cat", "/w/z")
    assert (got.returncode, got.stdout) == (0, "x\n"), got.stderr
    assert (tmp_path / "b2" / "z").read_text() == "x\n"
