"""Inputs are owned by the user the container runs as, resolved as dockerd resolves
``docker run -u`` at start: against the /etc/passwd and /etc/group the container has then,
an input's over the image's (issue 11, a new user's trial: alice from an input passwd ran as
4242 while her inputs were root's). A name found nowhere ends the execution ``user_not_found``
as ``docker run`` would, inputs or not; never a silent fall-back to root."""

from __future__ import annotations

import uuid

import pytest

from schemas import ExecutionStatus

pytestmark = pytest.mark.integration

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nalice:x:4242:4343::/home/alice:/bin/sh\n"
GROUP = b"root:x:0:\nalicegrp:x:4343:\nstaff:x:5555:alice\n"
SCRIPT = "id -u; id -g; stat -c '%u:%g' /x /data /data/f"


def request(image: str, user: str) -> dict:
    return {"execution_id": f"user-{uuid.uuid4().hex[:8]}",
            "engine": {"image": image, "user": user, "cmd": ["sh", "-c", SCRIPT]}}


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("alice", "4242:4343"),  # name and primary group from the input /etc/passwd
        ("alice:staff", "4242:5555"),  # group name from the input /etc/group
        ("4242", "4242:4343"),  # a uid: its passwd entry's primary group
        ("alice:77", "4242:77"),
    ],
)
@pytest.mark.parametrize("form", ["files", "directory"])
def test_a_user_from_an_input_passwd_owns_the_inputs(producer, spawn_worker, test_image, tmp_path, user, expected, form):
    spawn_worker()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    inputs = {"/x": b"app.conf\n", "/data": tmp_path / "data"}
    if form == "files":
        inputs.update({"/etc/passwd": PASSWD, "/etc/group": GROUP})
    else:  # inside an input directory put at /etc (merged with the image's /etc, as Docker extracts)
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "passwd").write_bytes(PASSWD)
        (tmp_path / "etc" / "group").write_bytes(GROUP)
        inputs["/etc"] = tmp_path / "etc"
    eid = producer.submit(request(test_image, user), inputs=inputs)
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    uid, gid = expected.split(":")
    assert outcome.result.stdout == f"{uid}\n{gid}\n{expected}\n{expected}\n{expected}\n"


@pytest.mark.parametrize(
    ("user", "with_inputs", "words"),
    [
        ("nobody-here", True, "user 'nobody-here'"),
        ("nobody-here", False, "nobody-here"),
        ("0:no-such-group", True, "group 'no-such-group'"),
        ("0:no-such-group", False, "no-such-group"),
    ],
)
def test_an_unknown_user_ends_user_not_found_with_or_without_inputs(
    producer, spawn_worker, test_image, user, with_inputs, words, docker_client
):
    spawn_worker()
    inputs = {"/x": b"1"} if with_inputs else None
    eid = producer.submit(request(test_image, user), inputs=inputs)
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.ERROR and outcome.error.code == "user_not_found", outcome
    assert words in outcome.error.message
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})


def test_an_input_passwd_that_is_not_a_file_is_refused_not_guessed(producer, spawn_worker, test_image, tmp_path):
    """An input /etc/passwd that is a symlink cannot be read before start: user_not_found naming
    why, rather than inputs owned by a guessed user."""
    spawn_worker()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/shadow")
    eid = producer.submit(request(test_image, "alice"), inputs={"/etc": tmp_path / "etc", "/x": b"1", "/data/f": b"x"})
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.ERROR and outcome.error.code == "user_not_found", outcome
    assert "not a regular file" in outcome.error.message
