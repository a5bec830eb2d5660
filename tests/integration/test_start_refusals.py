"""A container the daemon refuses to start for a reason in the request is reported by that
reason, in Docker's terms: a missing user (``-u``), a missing or non-executable command
(``docker run`` exits 127 / 126 for those, and so does ``dockrq``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas import ExecutionStatus
from worker.executor import LABEL_EXECUTOR, ContainerCreateError, new_executor

pytestmark = pytest.mark.integration

DOCKRQ = Path(sys.executable).with_name("dockrq")


@pytest.fixture
def executor(docker_client, unique):
    ex = new_executor(f"test-{unique}", stop_grace_seconds=1.0)
    yield ex
    ex.cleanup()
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"{LABEL_EXECUTOR}={ex.executor_id}"})
    ex.close()


@pytest.mark.parametrize(
    ("engine", "code", "says"),
    [
        ({"cmd": ["true"], "user": "nosuchuser"}, "user_not_found", "engine.user: the user 'nosuchuser' was not found"),
        ({"cmd": ["true"], "user": "0:nosuchgroup"}, "user_not_found", "the group 'nosuchgroup' was not found"),
        ({"cmd": ["nosuchbin"]}, "command_not_found", "the executable 'nosuchbin' was not found in $PATH"),
        ({"entrypoint": ["nosuchep"], "cmd": ["x"]}, "command_not_found", "the executable 'nosuchep' was not found"),
        ({"cmd": ["/no/such/binary"]}, "command_not_found", "'/no/such/binary' was not found in the image"),
        ({"cmd": ["/"]}, "command_not_executable", "cannot be executed"),
    ],
)
def test_the_reason_is_named_not_container_create(executor, test_image, docker_client, engine, code, says):
    eid = f"refused-{code}-{abs(hash(str(engine))) % 10_000}"
    with pytest.raises(ContainerCreateError) as caught:  # still a ContainerCreateError for callers catching it
        executor.start({"execution_id": eid, "engine": {"image": test_image, **engine}})
    assert caught.value.code == code
    result = executor.wait(eid).result(10)
    assert (result.status, result.error_code) == (ExecutionStatus.ERROR, code)
    assert says in result.error_msg, result.error_msg
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})


def test_dockrq_submit_says_so_and_exits_as_docker_run(spawn_worker, redis_url, test_image):
    spawn_worker()
    base = [str(DOCKRQ), "--redis-url", redis_url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue]
    missing_user = subprocess.run([*base, "submit", "-u", "nosuchuser", test_image, "true"],
                                  capture_output=True, text=True, timeout=60)
    assert missing_user.returncode == 125
    assert "error: user_not_found: engine.user: the user 'nosuchuser' was not found in the image" in missing_user.stderr
    missing_cmd = subprocess.run([*base, "submit", test_image, "nosuchbin"], capture_output=True, text=True, timeout=60)
    assert missing_cmd.returncode == 127, missing_cmd.stderr
    assert "error: command_not_found: " in missing_cmd.stderr and "container_create" not in missing_cmd.stderr
