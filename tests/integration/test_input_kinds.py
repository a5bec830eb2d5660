"""An input never replaces a directory of the container by a file, nor a file by a directory, on a
real dockrq-worker, Redis and dockerd: Docker's untar removes whatever is at an entry's path unless
both are directories, so ``--input a.txt:/m/keep`` used to delete the directory ``/m/keep``, through
a writable bind mount on the host too. Refused with ``input_path_invalid`` before anything of that
path is written; what worked (a directory merging into one, a file replacing a file) still does."""

from __future__ import annotations

import uuid

import pytest

from schemas import ExecutionStatus

from dockrq_cli import dockrq_at_once

pytestmark = pytest.mark.integration


def req(image, name, script, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", script]}, **fields}


def test_an_input_never_replaces_a_bind_mounted_directory_or_file_on_the_host(redis_url, spawn_worker, test_image, tmp_path):
    mnt = tmp_path / "mnt"
    (mnt / "keep").mkdir(parents=True)
    (mnt / "keep" / "precious.txt").write_text("precious\n")
    (mnt / "afile").write_text("host file\n")
    (mnt / "other").mkdir()
    (mnt / "other" / "kept.txt").write_text("kept\n")
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x\n")
    spawn_worker(env={"DOCKRQ_ALLOWED_MOUNT_ROOTS": str(mnt)})
    v = ("-v", f"{mnt}:/m:rw")
    early = bytes(range(256)) * 4500  # over the worker's 256 KiB chunks, not a multiple of one
    (tmp_path / "early").write_bytes(early)
    refused, dir_onto_file, merged, second = dockrq_at_once(
        redis_url, spawn_worker,
        (("submit", *v, "--input", f"{tmp_path / 'a.txt'}:/m/keep", test_image, "ls", "-la", "/m"), {}),
        (("submit", *v, "--input", f"{tmp_path / 'dir'}:/m/afile", test_image, "ls", "-la", "/m"), {}),
        # what works stays: a directory merges into a directory, a file replaces a file
        (("submit", *v, "--input", f"{tmp_path / 'dir'}:/m/other", "--input", f"{tmp_path / 'a.txt'}:/m/old.txt",
          test_image, "cat", "/m/other/kept.txt", "/m/other/x", "/m/old.txt"), {}),
        # the second path (sorted) is refused: the first may be put, whole, never cut short
        (("submit", *v, "--input", f"{tmp_path / 'early'}:/m/early", "--input", f"{tmp_path / 'a.txt'}:/m/keep/",
          test_image, "true"), {}),
    )
    assert refused.returncode == 125 and refused.stdout == "", refused
    assert "input_path_invalid" in refused.stderr and "Traceback" not in refused.stderr
    assert "inputs: /m/keep: a directory is there in the container and the input is a file" in refused.stderr
    assert "name the file's own path, e.g. /m/keep/NAME" in refused.stderr
    assert dir_onto_file.returncode == 125 and dir_onto_file.stdout == "", dir_onto_file
    assert "inputs: /m/afile: a file is there in the container and the input is a directory" in dir_onto_file.stderr
    assert (merged.returncode, merged.stdout) == (0, "kept\nx\na\n"), merged.stderr
    assert second.returncode == 125 and "inputs: /m/keep: a directory is there" in second.stderr, second
    assert not (mnt / "early").exists() or (mnt / "early").read_bytes() == early
    # the host's directory and file are untouched
    assert (mnt / "keep" / "precious.txt").read_text() == "precious\n"
    assert (mnt / "afile").read_text() == "host file\n"
    assert sorted(p.name for p in (mnt / "keep").iterdir()) == ["precious.txt"]


@pytest.mark.parametrize(
    ("path", "directory", "why"),
    [
        ("/bin", False, "/bin: a directory is there in the container and the input is a file"),
        ("/tmp", False, "/tmp: a directory is there in the container and the input is a file"),
        # /bin/sh is a symlink to busybox, a file: a directory does not replace it (docker cp: cannot copy directory)
        ("/bin/sh", True, "/bin/sh: a symlink to a file (/bin/sh -> /bin/busybox) is there in the container and the input is a directory"),
    ],
)
def test_an_input_of_the_other_kind_than_the_images_path_ends_input_path_invalid(
    producer, spawn_worker, test_image, docker_client, tmp_path, path, directory, why
):
    spawn_worker()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x\n")
    given = tmp_path / "dir" if directory else b"x\n"
    eid = producer.submit(req(test_image, "kind", "echo ran"), inputs={path: given})
    outcome = producer.wait(eid, timeout=60)
    assert (outcome.status, outcome.error.code) == (ExecutionStatus.ERROR, "input_path_invalid"), outcome
    message = outcome.error.message
    assert message.startswith(f"inputs: {why}") and "\n" not in message, message
    assert outcome.result is None or outcome.result.stdout == ""  # never started
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"}) == []


def test_inputs_of_the_same_kind_still_merge_and_replace_in_the_image(producer, spawn_worker, test_image, tmp_path):
    spawn_worker()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x\n")
    eid = producer.submit(  # /root a directory, /bin/ash a symlink to busybox (a file)
        req(test_image, "same-kind", "cat /tmp/a.txt /root/x /bin/ash && ls /bin/busybox"),
        inputs={"/tmp/a.txt": b"a\n", "/root": tmp_path / "dir", "/bin/ash": b"ash is a file\n"},
    )
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    assert outcome.result.stdout == "a\nx\nash is a file\n/bin/busybox\n"
