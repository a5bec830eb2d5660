"""Archives while Redis restarts without persistence, on a redis-server of the test's own (killed
and started again on its port: everything it held is gone) and the real dockerd.

The restart is made between two chunks of each archive, deterministically, from inside the
write or read (a hook on the chunk source), and the clients carry on as dockrq's do (their
Retry rides out the restart), so each write or read meets an empty Redis half-way:

* ``Producer.submit(inputs=)``: InputsLost, nothing enqueued, no key left;
* the worker's output sink: collecting fails (``outputs_truncated_by: ["error"]``), nothing kept;
* the worker's read of the input archive: ``error``/``inputs_unavailable``, the container never started.
"""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest

from producer import InputsLost, Producer
from producer import files as producer_files
from producer.files import build_input_archive, write_input_archive
from schemas import ExecutionRequest, ExecutionStatus, Keys
from schemas.connections import client_from_url
from scripts.faults import RedisServer
from worker.execution.files import RedisArchiveSink, execution_files
from worker.executor import ExecutionFiles, new_executor
from worker.executor.files import InputsUnavailable

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path, durable=False)  # no persistence: a restart loses every key
    server.start()
    yield server
    server.kill()


def restart(server: RedisServer) -> None:
    server.kill()
    server.start()


@pytest.fixture
def executor(unique):
    ex = new_executor(f"archint-{unique}", stop_grace_seconds=1)
    yield ex
    ex.cleanup()
    ex.close()


def test_submit_gives_up_an_input_archive_redis_lost_while_it_was_written(own_redis, monkeypatch, unique):
    chunks = producer_files.InputArchive.chunks_last_first

    def restarting(self, size=MiB):
        for n, chunk in enumerate(chunks(self, size)):
            if n == 1:  # the first chunk is in Redis: Redis restarts before the second
                restart(own_redis)
            yield chunk

    monkeypatch.setattr(producer_files.InputArchive, "chunks_last_first", restarting)
    with Producer(own_redis.url, queue=f"q-{unique}", prefix=f"p{unique}") as producer:
        with pytest.raises(InputsLost, match=r"^inputs: Redis lost the input archive while it was written .*: nothing enqueued$"):
            producer.submit({"execution_id": "lost", "engine": {"image": "busybox"}},
                            inputs={"/in/a": b"a" * (3 * MiB)})
    client = client_from_url(own_redis.url)
    assert client.keys("*") == []  # no job, no claim, no archive (the APPEND's new string was removed)
    client.close()


def test_outputs_redis_lost_while_they_were_written_are_not_kept(own_redis, executor, docker_client, test_image):
    container = docker_client.containers.run(
        test_image, ["sh", "-c", "mkdir /out && head -c 3145728 /dev/urandom > /out/r && echo s > /out/s"],
        detach=True, labels={"dockrq.executor": executor.executor_id},
    )
    try:
        container.wait(timeout=60)
        client = client_from_url(own_redis.url)

        class RestartingSink(RedisArchiveSink):
            restarted = False

            def _flush(self) -> None:
                super()._flush()
                if self._started and not self.restarted:  # the first chunk is in Redis
                    self.restarted = True
                    restart(own_redis)

        keys = Keys("p")
        request = ExecutionRequest.model_validate({"execution_id": "e1", "engine": {"image": test_image}, "outputs": ["/out"]})
        sink = RestartingSink(client, keys, "e1", 60)
        fields = ExecutionFiles(outputs=sink).collect_outputs(executor.client, container.id, request)
        assert sink.restarted
        assert (fields["outputs_truncated_by"], fields["output_files"], fields["outputs_archive_bytes"]) == (["error"], [], None)
        assert client.keys("*") == []  # nothing kept, and the partial key the APPENDs made again is gone

        # Without a restart the same outputs are kept whole.
        whole = RedisArchiveSink(client, keys, "e2", 60)
        fields = ExecutionFiles(outputs=whole).collect_outputs(executor.client, container.id, request)
        assert fields["outputs_truncated_by"] == [] and fields["outputs_archive_bytes"] == client.strlen(keys.outputs("e2"))
        with tarfile.open(fileobj=io.BytesIO(client.get(keys.outputs("e2")))) as tar:
            assert [m.name for m in tar] == ["out", "out/r", "out/s"]
        client.close()
    finally:
        container.remove(force=True)


def test_an_input_archive_redis_loses_while_the_worker_reads_it_is_inputs_unavailable(own_redis, executor, test_image):
    client = client_from_url(own_redis.url)
    keys = Keys("p")
    archive = build_input_archive({"/in/a": b"a" * (3 * MiB)}, max_input_bytes=16 * MiB)
    eid = f"gone-{uuid.uuid4().hex[:6]}"
    write_input_archive(client, keys.inputs(eid), archive, 60)
    request = ExecutionRequest.model_validate({
        "execution_id": eid, "engine": {"image": test_image, "cmd": ["cat", "/in/a"]}, "inputs": archive.spec.model_dump(),
    })
    files = execution_files(client, keys, request, 60)  # the right length when checked
    getrange = client.getrange
    reads: list[int] = []

    def restarting_getrange(key, start, end):
        if len(reads) == 1:  # one chunk read: Redis restarts before the second
            restart(own_redis)
        reads.append(start)
        return getrange(key, start, end)

    client.getrange = restarting_getrange
    with pytest.raises(InputsUnavailable):
        executor.start(request, files=files)
    result = executor.wait(eid).result(60)
    assert (result.status, result.error_code, result.started_at) == (ExecutionStatus.ERROR, "inputs_unavailable", None)
    assert result.error_msg == (
        f"inputs: reading the input archive failed: the archive at p:exec:{eid}:inputs vanished from Redis while it "
        f"was read (it ends at byte {MiB} of {archive.spec.archive_bytes}: deleted, expired, or lost in a Redis restart)"
    )
    archive.close()
    client.close()
