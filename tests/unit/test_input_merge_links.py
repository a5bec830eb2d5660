"""An input directory merged onto an existing directory leaves that directory's owner and mode
alone (worker/executor/archive.py), and hard links inside an input directory stay hard links
(producer/files.py): a new user's trial found both broken (issue 11)."""

from __future__ import annotations

import io
import os
import tarfile

from producer.files import build_input_archive
from schemas import InputsSpec
from worker.executor.archive import InputArchive
from worker.executor.pathstat import Existing


def _dir_tar(*names: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def _members(out: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_a_directory_onto_a_directory_leaves_out_its_own_entry_only():
    spec = InputsSpec(paths=["/m/own", "/new"], entries=5, bytes=2, archive_bytes=10240)
    raw = _dir_tar("m/own/", "m/own/sub/", "m/own/sub/f", "new/", "new/g")
    existing = {"/m/own": Existing("/m/own", "directory", "", "directory"), "/new": None}
    got = _members(b"".join(InputArchive(spec, 1000, 1000, existing).stream(io.BytesIO(raw))))
    # /m/own keeps its owner and mode; what it receives, and a directory that was not there, go in
    assert sorted(got) == ["m/own/sub", "m/own/sub/f", "new", "new/g"]
    assert (got["m/own/sub"].uid, got["m/own/sub"].mode) == (1000, 0o700)
    # onto a symlink leading to a directory the entry stays: it replaces the symlink, never follows it
    linked = {"/m/own": Existing("/m/own", "symlink", "/etc", "directory"), "/new": None}
    got = _members(b"".join(InputArchive(spec, 0, 0, linked).stream(io.BytesIO(raw))))
    assert "m/own" in got and got["m/own"].isdir()


def test_hard_links_inside_an_input_stay_hard_links_counted_once(tmp_path):
    tree = tmp_path / "hl"
    tree.mkdir()
    (tree / "a").write_text("same\n")
    os.link(tree / "a", tree / "b")
    (tree / "sub").mkdir()
    os.link(tree / "a", tree / "sub" / "c")
    (tmp_path / "f").write_text("same\n")
    os.link(tmp_path / "f", tmp_path / "f2")
    archive = build_input_archive({"/in": tree, "/x": tmp_path / "f", "/y": tmp_path / "f2"}, max_input_bytes=100)
    try:
        raw = b"".join(archive.chunks())
    finally:
        archive.close()
    got = _members(raw)
    assert got["in/a"].isreg() and got["in/a"].size == 5
    assert got["in/b"].islnk() and got["in/b"].linkname == "in/a" and got["in/b"].size == 0
    assert got["in/sub/c"].islnk() and got["in/sub/c"].linkname == "in/a"
    # each input path on its own (a worker may put each with its own PUT): no link across them
    assert got["x"].isreg() and got["y"].isreg()
    assert archive.spec.entries == 7 and archive.spec.bytes == 5 + 5 + 5
    # the worker takes it as announced, links and all
    out = _members(b"".join(InputArchive(archive.spec, 7, 7).stream(io.BytesIO(raw))))
    assert out["in/b"].islnk() and out["in/b"].linkname == "in/a"
