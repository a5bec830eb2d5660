"""Where inputs and outputs land against tmpfs, bind mounts and read_only (schemas/placement.py),
the worker's extraction directories for them, and how the daemon's put-archive refusals are named
(worker/executor/refusals.py). Every producer path and the worker read the same model."""

from __future__ import annotations

import io
import tarfile

import fakeredis
import pytest
from docker.errors import APIError
from pydantic import ValidationError

from producer import InvalidRequest, Producer
from schemas import ExecutionRequest, InputsSpec, describe_validation_error
from schemas.execution import EngineSpec, Mount, Resources, format_size, parse_size  # the old import path
from schemas.placement import input_extraction_dir, mount_target
from worker.executor.archive import InputArchive, InputsRejected
from worker.executor.refusals import InputPathInvalid, InputPathReadOnly, explain_put_refusal


def inputs(*paths: str) -> dict:
    return {"paths": list(paths), "entries": len(paths), "bytes": 1, "archive_bytes": 4096}


def refusal(**fields) -> str:
    with pytest.raises(ValidationError) as caught:
        ExecutionRequest(engine={"image": "busybox"}, **fields)
    return describe_validation_error(caught.value)


def accepted(**fields) -> ExecutionRequest:
    return ExecutionRequest(engine={"image": "busybox"}, **fields)


def rw(target: str, source: str = "/srv/data") -> dict:
    return {"source": source, "target": target, "read_only": False}


def test_the_split_keeps_the_old_import_paths():
    assert EngineSpec.__module__ == "schemas.engine" and Mount.__module__ == "schemas.placement"
    assert parse_size(format_size(64 * 1024**2)) == 64 * 1024**2 and Resources().memory is None


@pytest.mark.parametrize("target", ["/scratch", "/scratch/", "/scratch//", "/a/../scratch", "//scratch"])
@pytest.mark.parametrize("path", ["/scratch", "/scratch/x", "/scratch/deep/x"])
def test_inputs_and_outputs_at_or_under_a_tmpfs_are_refused_naming_the_field(target, path):
    text = refusal(tmpfs=[{"target": target}], inputs=inputs(path))
    assert text.startswith("inputs: ") and f"{path} is at or under tmpfs /scratch" in text and "\n" not in text
    text = refusal(tmpfs=[{"target": target}], outputs=[path])
    assert text.startswith("outputs: ") and f"{path} is at or under tmpfs /scratch" in text and "stops" in text


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/proc/x", "at or under /proc"), ("/sys", "at or under /sys"), ("/dev/x", "at or under /dev"),
        ("/dev/shm/x", "at or under /dev"), ("/etc/hostname", "written by Docker"), ("/etc/hosts", "written by Docker"),
        ("/etc/resolv.conf", "written by Docker"),
    ],
)
def test_inputs_where_docker_mounts_its_own_at_start_are_refused(path, why):
    """A new user's trial: accepted, then silently hidden by the runtime's mounts."""
    text = refusal(inputs=inputs(path))
    assert text.startswith("inputs: ") and path in text and why in text and "\n" not in text
    accepted(inputs=inputs("/devices/x", "/etc/hosts.d/x", "/system/x", "/etc/hostname2"))


def test_entries_of_an_input_directory_where_docker_writes_at_start_are_refused(tmp_path):
    """A second new user's trial: an input directory put at /etc lost its hosts file unsaid."""
    producer = Producer(connection=fakeredis.FakeRedis(), prefix="p", queue="jobs")
    request = {"engine": {"image": "busybox"}}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "app.conf").write_text("a\n")
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 db\n")
    with pytest.raises(InvalidRequest, match=r"^inputs: /etc/hosts is written by Docker when the container starts.*etc/hosts\)$"):
        producer.submit(request, inputs={"/etc": tmp_path / "etc"})
    assert producer.connection.keys("*") == []
    (tmp_path / "etc" / "hosts").unlink()  # the rest of /etc, and hosts elsewhere, are taken
    producer.submit(request, inputs={"/etc": tmp_path / "etc", "/srv/etc/hosts": b"x"})

    # The worker checks each entry too, for archives written by another language's scheduler.
    spec = InputsSpec(paths=["/etc"], entries=3, bytes=2, archive_bytes=10240)
    for bad in ("etc/hosts", "etc/hostname", "etc/resolv.conf"):
        with pytest.raises(InputsRejected, match=f"^inputs: /{bad} is written by Docker"):
            b"".join(InputArchive(spec).stream(io.BytesIO(_tar("etc/", "etc/app.conf", bad))))
    assert b"".join(InputArchive(spec).stream(io.BytesIO(_tar("etc/", "etc/app.conf", "etc/hosts.allow"))))


def test_paths_beside_a_tmpfs_or_in_a_bind_mount_inside_it_are_taken():
    accepted(tmpfs=[{"target": "/scratch"}], inputs=inputs("/scratch2/x", "/scratc"), outputs=["/scratch2", "/s"])
    accepted(tmpfs=[{"target": "/scratch/tmp"}], inputs=inputs("/scratch/x"), outputs=["/scratch/y"])
    # A bind mount deeper than the tmpfs is mounted over it: what is put or written there stays.
    accepted(tmpfs=[{"target": "/scratch"}], mounts=[rw("/scratch/in")], inputs=inputs("/scratch/in/x"),
             outputs=["/scratch/in/y"])
    # Both fields at once: one line, each field named.
    text = refusal(tmpfs=[{"target": "/t"}], inputs=inputs("/t/a", "/t/b"), outputs=["/t/o"])
    assert text.count("inputs: ") == 1 and "/t/a is at or under" in text and "/t/b is at or under" in text
    assert "outputs: " in text and "\n" not in text


def test_read_only_takes_inputs_only_inside_a_writable_bind_mount():
    text = refusal(read_only=True, inputs=inputs("/in/x"))
    assert text.startswith("inputs: ") and "/in/x is on the read-only root filesystem (read_only)" in text
    accepted(read_only=True, mounts=[rw("/in")], inputs=inputs("/in/x", "/in/z/y"))
    accepted(read_only=True, mounts=[rw("/in")], inputs=inputs("/in"))  # the mount's own directory
    refusal(read_only=True, mounts=[rw("/in")], inputs=inputs("/input/x"))  # /input is not inside /in
    accepted(read_only=False, inputs=inputs("/in/x"))
    # Outputs are read after the end: a read-only root filesystem does not matter to them.
    accepted(read_only=True, outputs=["/out"])


def test_read_only_bind_mounts_refuse_inputs_whatever_read_only_says():
    for read_only in (False, True):
        text = refusal(read_only=read_only, mounts=[{"source": "/srv", "target": "/ref/"}], inputs=inputs("/ref/x"))
        assert "/ref/x is inside the read-only bind mount mounts.0 (/ref)" in text
    # A writable one inside a read-only one does not take them either, read_only or not: dockerd
    # refuses (mkdir of the mount point: read-only file system; with read_only it may pick the
    # read-only mount, archive_unix.go checkIfPathIsInAVolume) or loses them (a new user's trial).
    for read_only in (False, True):
        text = refusal(read_only=read_only, mounts=[{"source": "/srv", "target": "/ref"}, rw("/ref/out")],
                       inputs=inputs("/ref/out/x"))
        assert "inside mounts.1 (/ref/out), itself inside the read-only bind mount mounts.0 (/ref)" in text
        assert text.startswith("inputs: ") and "\n" not in text
    # ... and a writable one beside it, or a read-only one inside a writable one's sibling, does
    accepted(mounts=[{"source": "/srv", "target": "/ref"}, rw("/refs/out")], inputs=inputs("/refs/out/x"))
    accepted(mounts=[rw("/data"), {"source": "/srv", "target": "/data/ref"}], inputs=inputs("/data/x"))


def test_extraction_directories_follow_what_docker_checks():
    mounts = [Mount(**rw("/data/")), Mount(**rw("/data/in"))]
    assert input_extraction_dir("/data/x", [], mounts, read_only=False) == "/"
    assert input_extraction_dir("/data/x", [], mounts, read_only=True) == "/data"
    assert input_extraction_dir("/data/in/a/b", [], mounts, read_only=True) == "/data/in"
    assert input_extraction_dir("/data/in", [], mounts, read_only=True) == "/data/in"
    assert mount_target("/a/./b/../c/") == "/a/c" and mount_target("//x") == "/x"


def test_every_producer_path_refuses_before_anything_is_written():
    client = fakeredis.FakeRedis()
    producer = Producer(connection=client, prefix="p", queue="jobs")
    request = {"engine": {"image": "busybox"}, "tmpfs": [{"target": "/scratch"}]}
    with pytest.raises(InvalidRequest, match=r"^inputs: .*/scratch/x is at or under tmpfs /scratch"):
        producer.submit(request, inputs={"/scratch/x": b"hi"})  # the announcement is added after parsing
    with pytest.raises(InvalidRequest, match=r"inputs: .*read-only root filesystem"):
        producer.submit({"engine": {"image": "busybox"}, "read_only": True}, inputs={"/in": b"hi"})
    with pytest.raises(InvalidRequest, match=r"^outputs: .*/scratch/o is at or under tmpfs /scratch"):
        producer.submit({**request, "outputs": ["/scratch/o"]})
    assert client.keys("*") == []
    producer.submit({"engine": {"image": "busybox"}, "read_only": True, "mounts": [rw("/in")]}, inputs={"/in/a": b"x"})


def _tar(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_the_checked_archive_is_rebased_on_its_extraction_directory():
    spec = InputsSpec(paths=["/data/in", "/other/f"], entries=4, bytes=3, archive_bytes=10240)
    raw = _tar("data/in/", "data/in/a", "other/f")

    def names(only, base):
        out = b"".join(InputArchive(spec).stream(io.BytesIO(raw), only, base))
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            return tar.getnames()

    assert names(None, "/") == ["data/in", "data/in/a", "other/f"]
    assert names({"/data/in"}, "/data") == ["in", "in/a"]
    assert names({"/data/in"}, "/data/in") == ["a"]  # the mount itself is not replaced
    assert names({"/other/f"}, "/other") == ["f"]


def _api_error(status: int, message: str) -> APIError:
    response = type("R", (), {"status_code": status, "reason": "x", "url": "u"})()
    return APIError("500 Server Error", response=response, explanation=message)


@pytest.mark.parametrize(
    "message, kind, named, why",
    [  # dockerd 20.10's words, as seen on the real daemon (tests/integration/test_input_placement.py)
        ("Error processing tar file(exit status 1): open /etc/mtab/x: no such file or directory",
         InputPathInvalid, "/etc/mtab/x", "a directory on its way is not there"),
        ("Error processing tar file(exit status 1): open /bin/sh/x: not a directory",
         InputPathInvalid, "/bin/sh/x", "is a file"),
        ("extraction point is not a directory", InputPathInvalid, "/etc/mtab/x, /bin/sh/x", "not a directory"),
        ("container rootfs is marked read-only", InputPathReadOnly, "/etc/mtab/x, /bin/sh/x", "read-only"),
        ("mounted volume is marked read-only", InputPathReadOnly, "/etc/mtab/x, /bin/sh/x", "read-only"),
        ("Error processing tar file(exit status 1): unlinkat /bin/sh/x: read-only file system",
         InputPathReadOnly, "/bin/sh/x", "read-only file system"),
    ],
)
def test_put_archive_refusals_name_the_input(message, kind, named, why):
    error = explain_put_refusal(_api_error(500, message), ["/bin/sh/x", "/etc/mtab/x"] if "," not in named else
                                ["/etc/mtab/x", "/bin/sh/x"])
    assert isinstance(error, kind) and error.code in ("input_path_invalid", "input_path_read_only")
    text = str(error)
    assert text.startswith(f"inputs: {named}") and why in text and f"docker: {message}" in text and "\n" not in text


def test_other_put_archive_failures_stay_daemon_errors():
    assert explain_put_refusal(_api_error(404, "No such container: abc"), ["/x"]) is None
    assert explain_put_refusal(_api_error(500, "Error processing tar file: write /x: no space left on device"), ["/x"]) is None


def test_the_async_producer_refuses_the_same_before_writing():
    import asyncio

    from producer import AsyncProducer

    async def scenario() -> list:
        client = fakeredis.FakeAsyncRedis()
        async with AsyncProducer(connection=client, prefix="p", queue="jobs") as producer:
            producer._server_version = (7, 2, 0)  # fakeredis has no INFO (as test_producer_api_gaps)
            with pytest.raises(InvalidRequest, match=r"^inputs: .*/scratch/x is at or under tmpfs /scratch"):
                await producer.submit({"engine": {"image": "busybox"}, "tmpfs": [{"target": "/scratch"}]},
                                      inputs={"/scratch/x": b"hi"})
        return await client.keys("*")

    assert asyncio.run(scenario()) == []
