"""Hostile archives and hostile containers, on a real dockrq-worker, Redis and dockerd.

* input archives written straight to Redis (as a broken or hostile non-Python producer
  could) that would write outside their targets are rejected and the container never starts;
* a container that points its output paths at host files gets its own files collected,
  never the host's;
* an output archive that would leave the destination on extraction (as a hostile worker
  could write) is extracted without anything landing outside it.
"""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from producer import ArchiveRefused, parse_request
from producer.cli import cli
from schemas import WRITE_OUTCOME_LUA, ExecutionResult, ExecutionStatus, Outcome, OutputFile

pytestmark = pytest.mark.integration


def member(name, kind=tarfile.REGTYPE, data=b"", linkname="", **extra):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, linkname
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def tar_of(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


IN = member("data/in", tarfile.DIRTYPE)
HOSTILE_INPUTS = {
    "dotdot": [IN, member("data/in/../../etc/evil", data=b"x")],
    "absolute": [member("/data/in", tarfile.DIRTYPE), member("/etc/evil", data=b"x")],
    "outside": [IN, member("etc/evil", data=b"x")],
    "through-symlink": [IN, member("data/in/l", tarfile.SYMTYPE, linkname="/etc"), member("data/in/l/evil", data=b"x")],
    "hardlink-out": [IN, member("data/in/h", tarfile.LNKTYPE, linkname="etc/passwd")],
    "device": [IN, member("data/in/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "no-parent-entry": [IN, member("data/in/sub/f", data=b"x")],
    "twice": [IN, member("data/in/f", data=b"x"), member("data/in/f", data=b"y")],
}


def test_hostile_input_archives_are_rejected_before_the_container_starts(
    producer, spawn_worker, test_image, redis_client, docker_client
):
    worker = spawn_worker()
    script = "echo started"
    cases = {}

    def submit(name, archive, **spec):
        eid = f"hostile-{name}-{uuid.uuid4().hex[:6]}"
        if archive is not None:
            redis_client.set(f"{worker.prefix}:exec:{eid}:inputs", archive, ex=600)
        inputs = {"paths": ["/data/in"], "entries": 10, "bytes": 10, "archive_bytes": len(archive or b"x" * 10240), **spec}
        # A manifest written as another language's scheduler would (Producer.submit refuses one
        # given inside the request: it writes it only from inputs=), enqueued by the same writes.
        request = parse_request({"execution_id": eid, "engine": {"image": test_image, "cmd": ["sh", "-c", script]}, "inputs": inputs})
        producer._run(producer._prepare_submit(request, queue=None, at=None, delay=None, at_front=False))
        cases[eid] = name

    for name, members in HOSTILE_INPUTS.items():
        submit(name, tar_of(*members))
    submit("more-entries", tar_of(IN, member("data/in/a"), member("data/in/b")), entries=2)
    submit("more-bytes", tar_of(IN, member("data/in/a", data=b"0123456789")), bytes=5)
    submit("not-a-tar", b"\x01" * 10240)
    submit("missing", None)
    submit("wrong-size", tar_of(IN), archive_bytes=20480)
    # Docker writes /etc/hosts at start: an entry of a directory put at /etc would be lost.
    submit("runtime-file", tar_of(member("etc", tarfile.DIRTYPE), member("etc/hosts", data=b"x")), paths=["/etc"])

    for eid, name in cases.items():
        outcome = producer.wait(eid, timeout=60)
        assert (outcome.status, outcome.error.code) == (ExecutionStatus.REJECTED, "invalid_inputs"), (name, outcome)
        assert outcome.error.message.startswith("inputs: "), (name, outcome.error.message)
        if outcome.result is not None:  # refused on the way in: the container never started
            assert (outcome.result.started_at, outcome.result.exit_code, outcome.result.stdout) == (None, None, ""), name
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.executor={worker.executor_id}"})

    # The same worker goes on running good inputs.
    ok = producer.submit({"execution_id": f"good-{uuid.uuid4().hex[:6]}", "engine": {"image": test_image, "cmd": ["cat", "/data/in/f"]}},
                         inputs={"/data/in/f": b"fine"})
    assert producer.wait(ok, timeout=60).result.stdout == "fine"


def test_container_symlinks_never_make_dockrq_read_host_files(producer, spawn_worker, test_image, tmp_path):
    spawn_worker()
    host_passwd = Path("/etc/passwd").read_bytes()
    script = (
        "echo container-only > /etc/passwd && mkdir /out && ln -s /etc/passwd /out/p && ln -s /etc /out/etc "
        "&& ln -s /etc/passwd /link && ln -s / /rootlink && ln -s /dev/zero /out/zero"
    )
    eid = f"links-{uuid.uuid4().hex[:6]}"
    producer.submit({
        "execution_id": eid, "engine": {"image": test_image, "cmd": ["sh", "-c", script]},
        "outputs": ["/out", "/link", "/rootlink", "/etc/passwd"],
    })
    result = producer.wait(eid, timeout=60).result
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.output_files == [
        OutputFile(path="/out", type="dir"),
        OutputFile(path="/out/etc", type="symlink", link="/etc"),
        OutputFile(path="/out/p", type="symlink", link="/etc/passwd"),
        OutputFile(path="/out/zero", type="symlink", link="/dev/zero"),
        OutputFile(path="/link", type="symlink", link="/etc/passwd"),
        OutputFile(path="/rootlink", type="symlink", link="/"),
        OutputFile(path="/etc/passwd", size=len("container-only\n"), type="file"),  # the container's own
    ]
    raw = producer.outputs_archive(eid)
    assert host_passwd not in raw and host_passwd.splitlines()[0] not in raw

    dest = tmp_path / "place" / "dest"
    report = producer.outputs(eid, dest)
    assert (dest / "etc/passwd").read_text() == "container-only\n"
    assert sorted(p.relative_to(dest).as_posix() for p in report.written) == ["etc/passwd", "out"]
    assert len(report.skipped) == 5 and all("outside the destination" in s for s in report.skipped)
    assert os.listdir(tmp_path / "place") == ["dest"]  # nothing next to it either


def _hostile_outcome(redis_client, prefix, eid, archive, files):
    redis_client.set(f"{prefix}:exec:{eid}:outputs", archive, ex=600)
    result = ExecutionResult(
        execution_id=eid, status=ExecutionStatus.SUCCEEDED, exit_code=0, output_files=files,
        outputs_archive_bytes=len(archive),
    )
    redis_client.eval(WRITE_OUTCOME_LUA, 1, f"{prefix}:exec:{eid}:outcome", Outcome.from_result(result).model_dump_json(), 600)


def test_hostile_output_archives_never_leave_the_destination(producer, redis_client, tmp_path, monkeypatch):
    from click.testing import CliRunner

    prefix = producer.keys.prefix
    eid = f"evil-{uuid.uuid4().hex[:6]}"
    archive = tar_of(
        member("../escape", data=b"x"),
        member("/abs", data=b"x"),
        member("out", tarfile.DIRTYPE),
        member("out/ok", data=b"fine"),
        member("out/a/../../../b", data=b"x"),
        member("out/l", tarfile.SYMTYPE, linkname="/etc"),
        member("out/l/passwd", data=b"x"),
        member("out/up", tarfile.SYMTYPE, linkname="../../up"),
        member("out/self", tarfile.SYMTYPE, linkname="."),
        member("out/self/../../c", data=b"x"),
        member("out/h", tarfile.LNKTYPE, linkname="etc/passwd"),
        member("out/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
    )
    files = [OutputFile(path=f"/p{i}", size=4, type="file") for i in range(12)]
    _hostile_outcome(redis_client, prefix, eid, archive, files)
    dest = tmp_path / "sub" / "dest"
    report = producer.outputs(eid, dest)
    # out/l/passwd lands in a real directory out/l: its symlink to /etc was skipped, not followed.
    assert [p.relative_to(dest).as_posix() for p in report.written] == ["out", "out/ok", "out/l/passwd", "out/self"]
    assert len(report.skipped) == 8
    assert (dest / "out/ok").read_text() == "fine"
    assert not (dest / "out/l").is_symlink() and os.readlink(dest / "out/self") == "."
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert everything == [
        "sub", "sub/dest", "sub/dest/out", "sub/dest/out/l", "sub/dest/out/l/passwd", "sub/dest/out/ok", "sub/dest/out/self",
    ]

    # The CLI says what it skipped, one line each, and exits 1 with the safe part copied.
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    got = runner.invoke(cli, ["--redis-url", producer.redis_url, "--prefix", prefix, "cp", f"{eid}:/", "viacli"])
    assert got.exit_code == 1, got.output
    assert got.stderr.count("dockrq: skipped ") == 8 and "Traceback" not in got.output
    assert got.stderr.splitlines()[-1] == "dockrq: 8 entries skipped; 4 written to viacli"
    assert not (tmp_path / "up").exists() and not os.path.lexists(tmp_path / "viacli/out/up")  # ../../up: out of viacli
    assert (tmp_path / "viacli/out/ok").read_text() == "fine"

    # More entries, or more file bytes, than the outcome announces: refused, with what was written listed.
    for announced, why in (
        ([OutputFile(path="/out", type="dir")], "more entries than the 1 announced"),
        ([OutputFile(path="/out", type="dir"), OutputFile(path="/out/ok", size=3, type="file")], "more file bytes"),
    ):
        other = f"evil-{uuid.uuid4().hex[:6]}"
        _hostile_outcome(redis_client, prefix, other, tar_of(member("out", tarfile.DIRTYPE), member("out/ok", data=b"fine")), announced)
        with pytest.raises(ArchiveRefused, match=why):
            producer.outputs(other, tmp_path / other)
        assert not (tmp_path / other / "out/ok").exists()


def test_inputs_replace_an_images_symlink_at_their_target_instead_of_following_it(
    producer, spawn_worker, test_image, docker_client, tmp_path
):
    """An image with /data/in -> /etc and /data/file -> /etc/imagefile: the inputs land at
    /data/in and /data/file themselves, and the image's /etc is untouched."""
    import subprocess

    tag = f"dockrq-test/files-links:{uuid.uuid4().hex[:8]}"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {test_image}\nRUN mkdir /data && ln -s /etc /data/in && echo image > /etc/imagefile && ln -s /etc/imagefile /data/file\n"
    )
    subprocess.run(["docker", "build", "-q", "--network", "none", "--label", "dockrq.test=files", "-t", tag, str(tmp_path / "ctx")],
                   check=True, capture_output=True, timeout=120)
    try:
        spawn_worker()
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "passwd").write_text("from input\n")
        eid = producer.submit(
            {"execution_id": f"links-{uuid.uuid4().hex[:6]}",
             "engine": {"image": tag, "cmd": ["sh", "-c", "[ -e /etc/passwd ] && echo leaked-into-etc; cat /etc/imagefile /data/in/passwd /data/file; "
                                              "[ -L /data/in ] || echo in-is-a-dir; [ -L /data/file ] || echo file-is-a-file"]}},
            inputs={"/data/in": tmp_path / "in", "/data/file": b"given\n"},
        )
        outcome = producer.wait(eid, timeout=60)
        assert outcome.result.stdout == "image\nfrom input\ngiven\nin-is-a-dir\nfile-is-a-file\n", outcome
    finally:
        docker_client.images.remove(tag, force=True)
