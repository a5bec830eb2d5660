"""Input files through Redis into the container, on a real dockrq-worker, Redis and dockerd:
they are there before the container starts, owned by its user, and bounded on both sides."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid

import pytest

from producer import InputsTooLarge, InvalidRequest
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration


def req(image, name, script, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", script]}, **fields}


@pytest.fixture
def user_image(docker_client, test_image, tmp_path):
    """An image whose USER is a name in its own /etc/passwd (app = 1234:5678), removed at teardown."""
    tag = f"dockrq-test/files-user:{uuid.uuid4().hex[:8]}"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {test_image}\n"
        "RUN echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'app:x:1234:5678::/home/app:/bin/sh' >> /etc/passwd"
        " && echo 'root:x:0:' > /etc/group && echo 'appgrp:x:5678:' >> /etc/group && echo 'other:x:4242:' >> /etc/group\n"
        "USER app\n"
    )
    subprocess.run(["docker", "build", "-q", "--network", "none", "--label", "dockrq.test=files", "-t", tag, str(tmp_path / "ctx")],
                   check=True, capture_output=True, timeout=120)
    yield tag
    docker_client.images.remove(tag, force=True)


def test_inputs_are_in_the_container_before_it_starts(producer, spawn_worker, test_image, tmp_path, redis_client):
    spawn_worker()
    tree = tmp_path / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 4)
    (tree / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "run.sh").chmod(0o755)
    os.symlink("a.txt", tree / "link")  # kept as a symlink
    single = tmp_path / "single.conf"
    single.write_text("k=v\n")
    script = (
        "cat /data/in/a.txt; /data/in/run.sh; md5sum /data/in/sub/b.bin | cut -d' ' -f1; readlink /data/in/link; "
        "cat /etc/app.conf; cat /opt/blob; stat -c '%a %u:%g' /data/in/run.sh /data/in/sub"
    )
    eid = producer.submit(
        req(test_image, "in", script),
        inputs={"/data/in": tree, "/etc/app.conf": str(single), "/opt/blob": b"from bytes\n"},
    )
    outcome = producer.wait(eid, timeout=60)
    import hashlib

    digest = hashlib.md5(bytes(range(256)) * 4).hexdigest()
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert outcome.result.stdout == (
        f"alpha\nran\n{digest}\na.txt\nk=v\nfrom bytes\n755 0:0\n{oct((tree / 'sub').stat().st_mode & 0o777)[2:]} 0:0\n"
    )
    key = f"{spawn_worker.prefix}:exec:{eid}:inputs"
    assert 0 < redis_client.ttl(key) <= producer.retention_seconds  # expires with the retention
    with tarfile.open(fileobj=io.BytesIO(redis_client.get(key))) as tar:  # the documented format
        names = tar.getnames()
    assert names[:2] == ["data/in", "data/in/a.txt"] and "etc/app.conf" in names and "opt/blob" in names


def test_inputs_are_owned_by_the_containers_user(producer, spawn_worker, user_image, tmp_path):
    spawn_worker()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("x")
    # The image's USER app is 1234 with primary group 5678: the files are its own, so it can write there.
    eid = producer.submit(
        req(user_image, "owner", "id -u; stat -c '%u:%g' /work/in /work/in/f /work/one; echo more > /work/in/new && cat /work/in/new"),
        inputs={"/work/in": tmp_path / "in", "/work/one": b"1"},
    )
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert outcome.result.stdout == "1234\n1234:5678\n1234:5678\n1234:5678\nmore\n"


@pytest.mark.parametrize(
    ("user", "owner"),
    [
        ("app:other", "1234:4242"),  # names, looked up in the container's /etc/passwd and /etc/group
        ("4321:99", "4321:99"),  # numbers that are in neither file
        ("0", "0:0"),  # root, over the image's USER app
    ],
)
def test_inputs_are_owned_by_the_requests_user(producer, spawn_worker, user_image, tmp_path, user, owner):
    """engine.user (docker run -u) decides who owns the inputs, over the image's USER."""
    spawn_worker()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("x")
    request = req(user_image, "ruser", "id -u; id -g; stat -c '%u:%g' /work/in /work/in/f /work/one; "
                  "echo more > /work/in/new && cat /work/in/new")
    request["engine"]["user"] = user
    eid = producer.submit(request, inputs={"/work/in": tmp_path / "in", "/work/one": b"1"})
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    uid, gid = owner.split(":")
    assert outcome.result.stdout == f"{uid}\n{gid}\n{owner}\n{owner}\n{owner}\nmore\n"


def test_producer_refuses_inputs_over_its_bound_before_writing(producer, redis_client, test_image, tmp_path):
    producer.max_input_bytes = 1000
    (tmp_path / "big").write_bytes(b"x" * 1001)
    request = req(test_image, "too-big", "true")
    with pytest.raises(InputsTooLarge) as info:
        producer.submit(request, inputs={"/in/big": tmp_path / "big"})
    assert (info.value.limit, info.value.size) == (1000, 1001)
    assert "DOCKRQ_MAX_INPUT_BYTES" in str(info.value)
    with pytest.raises(InvalidRequest, match="inputs: .*nowhere: No such file"):
        producer.submit(request, inputs={"/in/x": tmp_path / "nowhere"})
    with pytest.raises(InvalidRequest, match="inputs: 'relative': must be an absolute container path"):
        producer.submit(request, inputs={"relative": b"x"})
    with pytest.raises(InvalidRequest, match="'/in/x' is '/in' or inside it"):
        producer.submit(request, inputs={"/in": b"x", "/in/x": b"y"})
    (tmp_path / "special").mkdir()
    os.mkfifo(tmp_path / "special" / "fifo")
    with pytest.raises(InvalidRequest, match="fifo is not a regular file"):
        producer.submit(request, inputs={"/in": tmp_path / "special"})
    assert redis_client.keys(f"*{request['execution_id']}*") == []  # nothing written, id still free
    producer.max_input_bytes = 1001
    assert producer.submit(request, inputs={"/in/big": tmp_path / "big"}) == request["execution_id"]


def test_worker_rejects_inputs_over_its_own_bound(producer, spawn_worker, test_image, docker_client):
    spawn_worker(env={"DOCKRQ_MAX_INPUT_BYTES": "1k"})
    eid = producer.submit(req(test_image, "over", "echo ran"), inputs={"/in/f": b"x" * 2000})
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.error.code, outcome.result) == (ExecutionStatus.REJECTED, "policy_violation", None)
    assert outcome.error.message == "inputs.bytes: 2000 is above this worker's limit 1024 (DOCKRQ_MAX_INPUT_BYTES)"
    ok = producer.submit(req(test_image, "under", "cat /in/f"), inputs={"/in/f": b"y" * 1024})
    assert producer.wait(ok, timeout=60).result.stdout == "y" * 1024
