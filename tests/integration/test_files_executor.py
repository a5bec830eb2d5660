"""The executor's files on its own (no Redis): ``start(request, files=ExecutionFiles(...))``
with a plain file for the inputs and an in-memory sink for the outputs, on a real dockerd."""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest

from producer.files import build_input_archive
from schemas import ExecutionRequest, ExecutionStatus
from worker.executor import ExecutionFiles, new_executor

pytestmark = pytest.mark.integration


class MemorySink:
    def __init__(self) -> None:
        self.data, self.committed, self.aborted = io.BytesIO(), False, False

    def write(self, data: bytes) -> None:
        self.data.write(data)

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def executor(unique):
    ex = new_executor(f"files-{unique}", stop_grace_seconds=1)
    yield ex
    ex.cleanup()
    ex.close()


def test_executor_puts_inputs_and_collects_outputs_without_redis(executor, test_image):
    archive = build_input_archive({"/in/a": b"alpha", "/in/b": b"beta"}, max_input_bytes=1024)
    sink = MemorySink()
    request = ExecutionRequest.model_validate({
        "execution_id": f"x-{uuid.uuid4().hex[:6]}",
        "engine": {"image": test_image, "cmd": ["sh", "-c", "mkdir /out && cat /in/a /in/b > /out/ab"]},
        "inputs": archive.spec.model_dump(), "outputs": ["/out", "/nope"],
    })
    executor.start(request, files=ExecutionFiles(open_inputs=lambda: open_archive(archive), outputs=sink))
    result = executor.wait(request.execution_id).result(60)
    assert result.status == ExecutionStatus.SUCCEEDED
    assert [(f.path, f.size) for f in result.output_files] == [("/out", 0), ("/out/ab", 9)]
    assert result.outputs_missing == ["/nope"] and sink.committed and not sink.aborted
    assert result.outputs_archive_bytes == len(sink.data.getvalue())
    with tarfile.open(fileobj=io.BytesIO(sink.data.getvalue())) as tar:
        assert tar.extractfile("out/ab").read() == b"alphabeta"
    archive.close()


def open_archive(archive):
    archive.file.seek(0)
    return io.BytesIO(archive.file.read())


def test_inputs_announced_but_not_given_are_rejected(executor, test_image):
    archive = build_input_archive({"/in/a": b"alpha"}, max_input_bytes=1024)
    request = ExecutionRequest.model_validate({
        "execution_id": f"x-{uuid.uuid4().hex[:6]}", "engine": {"image": test_image, "cmd": ["true"]},
        "inputs": archive.spec.model_dump(),
    })
    with pytest.raises(Exception, match="no input archive was given"):
        executor.start(request, files=ExecutionFiles())
    result = executor.wait(request.execution_id).result(30)
    assert (result.status, result.error_code, result.started_at) == (ExecutionStatus.REJECTED, "invalid_inputs", None)
    archive.close()


def test_outputs_of_a_container_that_is_gone_are_not_called_missing(executor, test_image, docker_client):
    container = docker_client.containers.create(test_image, ["true"], labels={"dockrq.executor": executor.executor_id})
    container.remove(force=True)
    sink = MemorySink()
    request = ExecutionRequest.model_validate({"engine": {"image": test_image}, "outputs": ["/out"]})
    fields = ExecutionFiles(outputs=sink).collect_outputs(executor.client, container.id, request)
    assert fields == {"output_files": [], "outputs_missing": [], "outputs_truncated": True,
                      "outputs_truncated_by": ["error"], "outputs_skipped": [], "outputs_archive_bytes": None,
                      "output_files_limit_bytes": 16 * 2**20, "output_files_limit_capped": False}
    assert sink.aborted and not sink.committed
