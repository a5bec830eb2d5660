"""``dockrq cp`` / ``Producer.copy_out`` / ``submit --output-dir`` on a real dockrq-worker, Redis and
dockerd: docker cp's destination rules (nothing of the user's is ever replaced by a directory),
skips said and exiting 1, names quoted unambiguously, ``cp ID:PATH -`` as a tar stream, which
limit left outputs out, and inputs that are symlinks."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from producer import CopyRefused, FollowLink
from schemas import WRITE_OUTCOME_LUA, ExecutionResult, ExecutionStatus, Outcome, OutputFile

from dockrq_cli import dockrq, dockrq_at_once

pytestmark = pytest.mark.integration

MAKE_OUT = (
    "mkdir -p /work/out/sub && echo a > /work/out/a.txt && echo b > /work/out/sub/b.txt "
    "&& ln -s /etc/passwd \"/work/out/l$(printf '\\351')\" && ln -s /etc/passwd '/work/out/l\\xe9' && echo ran"
)


def state(root: Path) -> dict[str, object]:
    return {
        p.relative_to(root).as_posix(): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def here(tmp_path):
    """An empty directory of the test's own (tmp_path also holds the workers' logs)."""
    path = tmp_path / "here"
    path.mkdir()
    return path


@pytest.fixture
def ended(producer, spawn_worker, test_image):
    """An ended execution whose /work/out holds a.txt, sub/b.txt and two symlinks to /etc/passwd
    named l + byte 0xE9 and l + the four characters \\xe9."""
    spawn_worker()
    eid = f"cp-{uuid.uuid4().hex[:8]}"
    producer.submit({"execution_id": eid, "engine": {"image": test_image, "cmd": ["sh", "-c", MAKE_OUT]},
                     "outputs": ["/work/out"]})
    outcome = producer.wait(eid, timeout=60)
    assert outcome.status == ExecutionStatus.SUCCEEDED, outcome
    return eid


def test_cp_never_replaces_a_file_by_a_directory(producer, spawn_worker, redis_url, ended, here):
    (here / "existing_file").write_text("precious")
    (here / "dir").mkdir()
    before = state(here)
    for args, message in (
        ((f"{ended}:/work/out", "existing_file"), "existing_file: cannot copy a directory to a file; nothing copied"),
        ((f"{ended}:/work/out/a.txt", "newdir/"),
         "newdir/: the destination directory must exist (a file cannot create it); nothing copied"),
        ((f"{ended}:/work/out", "nodir/x"), "nodir/x: its directory nodir: No such file or directory; nothing copied"),
        ((f"{ended}:/", "existing_file"), "existing_file: cannot copy a directory to a file; nothing copied"),
    ):
        got = dockrq(redis_url, spawn_worker, "cp", *args, cwd=here)
        assert (got.returncode, got.stdout, got.stderr) == (1, "", f"dockrq: {message}\n"), args
        assert state(here) == before, args
    got = dockrq(redis_url, spawn_worker, "--json", "cp", f"{ended}:/work/out", "existing_file", cwd=here)
    assert got.returncode == 1 and json.loads(got.stdout)["exit_code"] == 1
    with pytest.raises(CopyRefused, match="cannot copy a directory to a file"):
        producer.copy_out(ended, "/work/out", here / "existing_file")
    with pytest.raises(CopyRefused, match="existing_file: not a directory; nothing copied"):
        producer.outputs(ended, here / "existing_file")
    assert state(here) == before

    # What docker cp allows: a file over a file, a file into a directory, a directory as a new name.
    assert dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/a.txt", "existing_file", cwd=here).returncode == 0
    assert (here / "existing_file").read_text() == "a\n"
    assert dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/a.txt", "dir", cwd=here).returncode == 0
    assert (here / "dir" / "a.txt").read_text() == "a\n"
    producer.copy_out(ended, "/work/out/sub", here / "newsub/")
    assert state(here / "newsub") == {"b.txt": b"b\n"}


def test_output_dir_never_replaces_a_file_by_a_directory(spawn_worker, redis_url, test_image, here):
    spawn_worker()
    results = here / "results"
    (results / "work").mkdir(parents=True)
    (results / "work" / "out").write_text("precious")
    got = dockrq(redis_url, spawn_worker, "submit", "--output", "/work/out", "--output", "/work/more",
                 "--output-dir", str(results), test_image, "sh", "-c",
                 "mkdir -p /work/out /work/more && echo x > /work/out/f && echo y > /work/more/g")
    assert got.returncode == 125, got.stderr
    assert got.stderr.splitlines() == [
        f"dockrq: skipped '{results}/work/out': a directory, and a file is there: not replaced (nothing under it copied)",
        f"dockrq: 1 output entries not written to {results}",
    ]
    assert state(results) == {"work": "dir", "work/more": "dir", "work/more/g": b"y\n", "work/out": b"precious"}


def test_cp_of_skipped_entries_exits_1_and_says_each_quoted(producer, spawn_worker, redis_url, ended, here):
    # One entry, skipped (a symlink out of the destination): nothing written, exit 1.
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/l\\xe9", "x", cwd=here)
    assert got.returncode == 1
    assert got.stderr.splitlines() == [
        "dockrq: skipped 'x': a symlink to '/etc/passwd', outside the destination",  # where it would have gone
        "dockrq: 1 entries skipped; 0 written to x",
    ]
    assert not (here / "x").exists()
    # The other one, named with the byte 0xE9 (given raw, as to docker cp): listed escaped, quoted apart.
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/l".encode() + b"\xe9", "y", cwd=here)
    assert got.returncode == 1
    assert got.stderr.splitlines()[0] == (
        "dockrq: skipped 'y': a symlink to '/etc/passwd', outside the destination")
    listed = [(f.path, f.escaped) for f in producer.wait(ended).result.output_files if "/l" in f.path]
    assert sorted(listed) == [("/work/out/l\\xe9", False), ("/work/out/l\\xe9", True)]  # the flag tells them apart
    # A directory with two skipped links: the rest is written, each skip said, names told apart.
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out", "copy", cwd=here)
    assert got.returncode == 1
    assert sorted(got.stderr.splitlines()) == [
        "dockrq: 2 entries skipped; 4 written to copy",
        "dockrq: skipped 'copy/l\\\\xe9': a symlink to '/etc/passwd', outside the destination",
        "dockrq: skipped 'copy/l\\xe9': a symlink to '/etc/passwd', outside the destination",
    ]
    assert state(here / "copy") == {"a.txt": b"a\n", "sub": "dir", "sub/b.txt": b"b\n"}
    got = dockrq(redis_url, spawn_worker, "--json", "cp", f"{ended}:/work/out", "json", cwd=here)
    report = json.loads(got.stdout)
    assert (got.returncode, report["exit_code"], len(report["skipped"]), len(report["written"])) == (1, 1, 2, 4)
    # All written: 0, nothing on stderr.
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/sub", "sub", cwd=here)
    assert (got.returncode, got.stderr) == (0, "")


def test_cp_to_dash_writes_a_tar_stream_to_stdout(spawn_worker, redis_url, ended, here):
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out", "-", cwd=here, text=False)
    assert (got.returncode, got.stderr) == (0, b"")
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        names = sorted(n.encode("utf-8", "surrogateescape") for n in tar.getnames())
        assert tar.extractfile("out/sub/b.txt").read() == b"b\n"
    assert names == sorted([b"out", b"out/a.txt", b"out/sub", b"out/sub/b.txt", b"out/l\\xe9", b"out/l\xe9"])
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/out/a.txt", "-", text=False)
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == [("a.txt", b"a\n")]
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/", "-", text=False)
    with tarfile.open(fileobj=io.BytesIO(got.stdout)) as tar:
        assert "work/out/a.txt" in tar.getnames()
    got = dockrq(redis_url, spawn_worker, "cp", f"{ended}:/work/nothere", "-", text=False)
    assert (got.returncode, got.stdout) == (1, b"") and b"not among the output files" in got.stderr
    assert list(here.iterdir()) == []  # no file called "-"


def _hostile_outcome(redis_client, prefix, eid, archive, files):
    redis_client.set(f"{prefix}:exec:{eid}:outputs", archive, ex=600)
    result = ExecutionResult(execution_id=eid, status=ExecutionStatus.SUCCEEDED, exit_code=0, output_files=files,
                             outputs_archive_bytes=len(archive))
    redis_client.eval(WRITE_OUTCOME_LUA, 1, f"{prefix}:exec:{eid}:outcome", Outcome.from_result(result).model_dump_json(), 600)


def _tar(*entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_a_name_too_long_here_is_skipped_and_the_copy_goes_on(producer, spawn_worker, redis_client, redis_url, here):
    long = "n" * 300  # fine in the archive (a hostile worker's), ENAMETOOLONG on this disk
    eid = f"long-{uuid.uuid4().hex[:6]}"
    archive = _tar(("out", None), (f"out/{long}", b"x" * 1000), ("out/z", b"z"))
    files = [OutputFile(path="/out", type="dir"), OutputFile(path=f"/out/{long}", size=1000, type="file"),
             OutputFile(path="/out/z", size=1, type="file")]
    _hostile_outcome(redis_client, spawn_worker.prefix, eid, archive, files)
    got = dockrq(redis_url, spawn_worker, "cp", f"{eid}:/out", "dest", cwd=here)
    assert got.returncode == 1
    assert got.stderr.splitlines() == [
        f"dockrq: skipped 'dest/{long[:195]}'...: not written: File name too long",
        "dockrq: 1 entries skipped; 2 written to dest",
    ]
    assert state(here / "dest") == {"z": b"z"}

    # A skip before the archive turns out bad is still said, then the failure.
    bad = f"bad-{uuid.uuid4().hex[:6]}"
    _hostile_outcome(redis_client, spawn_worker.prefix, bad, _tar(("out", None), (f"out/{long}", b"x"), ("out/y", b"y")),
                     [OutputFile(path="/out", type="dir"), OutputFile(path="/out/y", size=1, type="file")])
    got = dockrq(redis_url, spawn_worker, "cp", f"{bad}:/out", "dest2", cwd=here)
    assert got.returncode == 1
    assert got.stderr.splitlines() == [
        f"dockrq: skipped 'dest2/{long[:194]}'...: not written: File name too long",
        "dockrq: the archive holds more entries than the 2 announced; stopped",
    ]


def test_which_limit_left_outputs_out_is_said(producer, spawn_worker, redis_url, test_image, here):
    spawn_worker()
    # 10005 empty files f0..f10004 (touch through xargs: a shell loop takes seconds longer)
    many = "mkdir /out && cd /out && seq 0 10004 | sed 's/^/f/' | xargs touch"
    got = dockrq(redis_url, spawn_worker, "--json", "submit", "--output", "/out", "--output", "/other",
                 test_image, "sh", "-c", many + "; mkdir /other")
    result = json.loads(got.stdout)["result"]
    assert (len(result["output_files"]), result["outputs_truncated"], result["outputs_truncated_by"]) == (
        10000, True, ["entries"])
    eid = json.loads(got.stdout)["execution_id"]
    # three independent CLI calls, run at the same time
    shown, got, bytes_limit = dockrq_at_once(
        redis_url, spawn_worker,
        (("status", eid), {}),
        (("cp", f"{eid}:/other", "x"), {"cwd": here}),
        (("submit", "--output", "/out", "--output-files-limit", "10", test_image,
          "sh", "-c", "mkdir /out && echo more-than-ten-bytes > /out/f"), {}),
    )
    assert "some left out (over the 10000 entries kept per execution)" in shown.stdout
    assert got.stderr == (f"dockrq: /other is not among the output files of {eid} "
                          "(left out: over the 10000 entries kept per execution)\n")

    got = bytes_limit
    assert got.returncode == 0
    assert got.stderr.splitlines()[0] == (
        "dockrq: output files were left out: over the output files limit of 10 (output_files_limit_bytes)")


def test_inputs_that_are_symlinks_go_in_as_symlinks_unless_followed(producer, spawn_worker, redis_url, redis_client,
                                                                     test_image, here):
    spawn_worker()
    (here / "real.txt").write_text("content\n")
    os.symlink("real.txt", here / "link")
    secret = here / "secret"
    secret.mkdir()
    (secret / "key").write_text("TOP-SECRET-BYTES\n")
    tree = here / "tree"
    tree.mkdir()
    (tree / "mine").write_text("mine\n")
    os.symlink(secret / "key", tree / "keylink")
    os.symlink(secret, tree / "dirlink")
    script = "readlink /in/x; cat /in/x 2>/dev/null || echo dangling; readlink /in/t/keylink; readlink /in/t/dirlink; cat /in/t/mine"
    expect_link = f"real.txt\ndangling\n{secret}/key\n{secret}\nmine\n"
    got = dockrq(redis_url, spawn_worker, "submit", "--input", f"{here}/link:/in/x", "--input", f"{tree}:/in/t",
                 test_image, "sh", "-c", script)
    assert (got.returncode, got.stdout) == (0, expect_link), got.stderr
    got = dockrq(redis_url, spawn_worker, "submit", "-L", "--input", f"{here}/link:/in/x", "--input", f"{tree}:/in/t",
                 test_image, "sh", "-c", script)
    assert (got.returncode, got.stdout) == (0, f"content\n{secret}/key\n{secret}\nmine\n"), got.stderr

    eid = f"links-{uuid.uuid4().hex[:6]}"
    producer.submit({"execution_id": eid, "engine": {"image": test_image, "cmd": ["sh", "-c", script]}},
                    inputs={"/in/x": FollowLink(here / "link"), "/in/t": tree})
    assert b"TOP-SECRET-BYTES" not in redis_client.get(f"{spawn_worker.prefix}:exec:{eid}:inputs")
    assert producer.wait(eid, timeout=60).result.stdout == f"content\n{secret}/key\n{secret}\nmine\n"
