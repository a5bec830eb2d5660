"""dockrq cp's local side without Redis: docker cp's destination rules (producer/copy_dest.py),
per-entry failures and refusals of the extractor, the quoting of archive names, the tar of
one path for ``cp ID:PATH -``, input symlinks, and pydantic's messages in our own words."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from producer import CopyRefused, FollowLink
from producer.copy_dest import place
from producer.cp_tar import write_path_tar
from producer.extract import ArchiveRefused, safe_extract
from producer.files import build_input_archive
from schemas.text import quoted_name
from schemas.wire import describe_validation_error


def member(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def archive(*members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def extract(dest, *members, **kw):
    return safe_extract(io.BytesIO(archive(*members)), dest, max_entries=1000, max_file_bytes=10**9, **kw)


def snapshot(root: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else "dir" if p.is_dir() else "other")
        for p in sorted(root.rglob("*"))
    }


# -- docker cp's destination rules ---------------------------------------------------------


def test_destination_rules_are_docker_cps(tmp_path):
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dir").mkdir()
    os.symlink("dir", tmp_path / "todir")
    os.symlink("file", tmp_path / "tofile")
    before = snapshot(tmp_path)

    # An existing directory: inside it, under the source's own name.
    assert place(tmp_path / "dir", source_is_dir=True) == place(tmp_path / "dir", source_is_dir=False)
    assert place(tmp_path / "dir", True).directory == tmp_path / "dir" and place(tmp_path / "dir", True).name is None
    assert place(str(tmp_path / "dir") + "/", False).name is None
    assert place(tmp_path / "todir", True).name is None  # a symlink at the end is followed
    # An existing file: a file replaces it, a directory is refused.
    assert place(tmp_path / "file", False) == place(tmp_path / "tofile", False)
    assert place(tmp_path / "file", False).name == "file"
    for refused, source_is_dir, why in (
        (tmp_path / "file", True, "cannot copy a directory to a file"),
        (tmp_path / "tofile", True, "cannot copy a directory to a file"),
        (str(tmp_path / "new") + "/", False, "the destination directory must exist"),
        (str(tmp_path / "file") + "/", False, "Not a directory"),
        (str(tmp_path / "file") + "/", True, "Not a directory"),
        (tmp_path / "nodir" / "x", False, "No such file or directory"),
        (tmp_path / "nodir" / "x", True, "No such file or directory"),
        (tmp_path / "file" / "x", False, "Not a directory"),
    ):
        with pytest.raises(CopyRefused, match=why):
            place(refused, source_is_dir)
    # Not there, parent a directory: it becomes the destination (a directory source may end in /).
    assert place(tmp_path / "new", False).name == "new" and place(str(tmp_path / "new") + "/", True).name == "new"
    assert snapshot(tmp_path) == before  # deciding never writes


# -- the extractor: refusals of the other kind, local errors, quoting ----------------------


def test_a_directory_never_replaces_a_file_and_what_is_under_it_is_skipped_once(tmp_path):
    dest = tmp_path / "dest"
    (dest / "work").mkdir(parents=True)
    (dest / "work" / "out").write_text("precious")
    os.symlink("elsewhere", dest / "link")
    report = extract(
        dest,
        member("work", tarfile.DIRTYPE), member("work/out", tarfile.DIRTYPE), member("work/out/a", data=b"a"),
        member("work/out/sub", tarfile.DIRTYPE), member("work/out/sub/b", data=b"b"),
        member("link", tarfile.DIRTYPE), member("link/c", data=b"c"), member("other", data=b"o"),
    )
    assert (dest / "work" / "out").read_text() == "precious" and os.readlink(dest / "link") == "elsewhere"
    assert [s.split(":")[0] for s in report.skipped] == [f"'{dest}/work/out'", f"'{dest}/link'"]  # where they would have gone
    assert "a file is there: not replaced" in report.skipped[0] and "a symlink is there" in report.skipped[1]
    assert [p.relative_to(dest).as_posix() for p in report.written] == ["other"]
    assert not report.complete


def test_local_errors_skip_the_entry_and_the_copy_goes_on(tmp_path):
    dest = tmp_path / "dest"
    long = "n" * 300  # a name component the local filesystem refuses: ENAMETOOLONG
    seen = []
    report = extract(
        dest, member("a", data=b"1"), member(long, data=b"x" * 5000), member(f"{long}d", tarfile.DIRTYPE),
        member(f"{long}d/inner", data=b"y"), member("z", data=b"2"), on_skip=seen.append,
    )
    assert snapshot(dest) == {"a": b"1", "z": b"2"}
    assert report.skipped == seen == [
        f"'{dest}/{long[:200]}'...: not written: File name too long",
        f"'{dest}/{long[:200]}'...: not written: File name too long (nothing under it copied)",
    ]


def test_a_file_cut_short_is_not_left_behind_and_the_skips_so_far_are_reported(tmp_path):
    whole = archive(member("../bad", data=b"x"), member("ok", data=b"fine"), member("big", data=b"x" * 20000))
    with pytest.raises(ArchiveRefused, match="damaged") as info:
        safe_extract(io.BytesIO(whole[:-12000]), tmp_path / "d", max_entries=10, max_file_bytes=10**6)
    assert snapshot(tmp_path / "d") == {"ok": b"fine"}  # no partial "big"
    assert [s.split(":")[0] for s in info.value.report.skipped] == ["'../bad'"]
    assert [p.name for p in info.value.report.written] == ["ok"]


def test_links_of_a_copy_under_a_new_name_stay_inside_it(tmp_path):
    """dockrq cp ID:/out new extracts into new's parent under the name new: a link there may not
    climb out of new into its parent, where it would be inside the extraction root but not the copy."""
    (tmp_path / "sibling").write_text("not yours")
    report = extract(
        tmp_path, member("out", tarfile.DIRTYPE), member("out/d", tarfile.DIRTYPE),
        member("out/d/ok", tarfile.SYMTYPE, linkname="../x"), member("out/up", tarfile.SYMTYPE, linkname="../sibling"),
        member("out/also", tarfile.SYMTYPE, linkname="../new/x"),
        rename=lambda name: "new" + name[3:], link_root="new",
    )
    assert [s.split(":")[0] for s in report.skipped] == [f"'{tmp_path}/new/up'", f"'{tmp_path}/new/also'"]
    assert os.readlink(tmp_path / "new/d/ok") == "../x" and not os.path.lexists(tmp_path / "new/up")


def test_names_are_quoted_unambiguously():
    undecodable = os.fsdecode(b"caf\xe9")
    assert quoted_name(undecodable) == "'caf\\xe9'"
    assert quoted_name("caf\\xe9") == "'caf\\\\xe9'"  # a literal backslash: never read as a byte
    assert quoted_name("it's\n\t\x01\x7f") == "'it\\'s\\n\\t\\x01\\x7f'"
    assert quoted_name("café ✓") == "'café ✓'" and quoted_name("\u200e") == "'\\u200e'"
    names = [undecodable, "caf\\xe9", "caf\\\\xe9", "a'b", "a\\'b"]
    assert len({quoted_name(n) for n in names}) == len(names)


def test_skip_lines_quote_names_and_link_targets(tmp_path):
    report = extract(
        tmp_path / "d",
        member(os.fsdecode(b"l\xe9"), tarfile.SYMTYPE, linkname=os.fsdecode(b"/etc/\xff")),
        member("l\\xe9", tarfile.SYMTYPE, linkname="/etc/\\xff"),
    )
    assert report.skipped == [
        f"'{tmp_path}/d/l\\xe9': a symlink to '/etc/\\xff', outside the destination",
        f"'{tmp_path}/d/l\\\\xe9': a symlink to '/etc/\\\\xff', outside the destination",
    ]


# -- cp ID:PATH - ----------------------------------------------------------------------------


def test_the_tar_of_one_path_is_named_as_docker_cp_names_it():
    source = archive(
        member("work", tarfile.DIRTYPE), member("work/out", tarfile.DIRTYPE), member("work/out/a", data=b"A" * 3000),
        member("work/out/l", tarfile.SYMTYPE, linkname="a"), member("work/outer", data=b"not me"),
        member("work/out/h", tarfile.LNKTYPE, linkname="work/out/a"), member("other", data=b"o"),
        member("work/out/" + "long" * 40, data=b"L"), member(os.fsdecode(b"work/out/\xe9"), tarfile.SYMTYPE, linkname="é" * 60),
    )
    out = io.BytesIO()
    assert write_path_tar(io.BytesIO(source), out, "/work/out") == 6
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        got = [(m.name, m.type, m.linkname) for m in tar]
        assert tar.extractfile("out/a").read() == b"A" * 3000
    assert got == [("out", tarfile.DIRTYPE, ""), ("out/a", tarfile.REGTYPE, ""), ("out/l", tarfile.SYMTYPE, "a"),
                   ("out/h", tarfile.LNKTYPE, "out/a"), ("out/" + "long" * 40, tarfile.REGTYPE, ""),
                   (os.fsdecode(b"out/\xe9"), tarfile.SYMTYPE, "é" * 60)]  # pax headers renamed too
    single = io.BytesIO()
    assert write_path_tar(io.BytesIO(source), single, "/work/out/a") == 1
    with tarfile.open(fileobj=io.BytesIO(single.getvalue())) as tar:
        assert tar.getnames() == ["a"]


# -- inputs: symlinks ---------------------------------------------------------------------


def test_an_input_that_is_a_symlink_goes_in_as_one_unless_followed(tmp_path):
    (tmp_path / "real.txt").write_text("content")
    os.symlink("real.txt", tmp_path / "link")
    for value, expect in ((tmp_path / "link", (tarfile.SYMTYPE, "real.txt", b"")),
                          (FollowLink(tmp_path / "link"), (tarfile.REGTYPE, "", b"content"))):
        built = build_input_archive({"/in/x": value}, 1 << 20)
        built.file.seek(0)
        with tarfile.open(fileobj=built.file) as tar:
            [m] = tar.getmembers()
            data = tar.extractfile(m).read() if m.isreg() else b""
            assert (m.name, m.type, m.linkname, data) == ("in/x", *expect)
        built.close()


def test_symlinks_inside_an_input_directory_never_read_outside_it(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"TOP-SECRET-BYTES")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("mine")
    os.symlink(secret / "key", tree / "keylink")
    os.symlink(secret, tree / "dirlink")
    os.symlink("../secret", tree / "sub" / "up")
    os.symlink(tree, tmp_path / "treelink")
    for value in (tree, FollowLink(tmp_path / "treelink")):
        built = build_input_archive({"/in": value}, 1 << 20)
        built.file.seek(0)
        raw = built.file.read()
        built.file.seek(0)
        with tarfile.open(fileobj=built.file) as tar:
            got = {m.name: (m.type, m.linkname) for m in tar}
        built.close()
        assert b"TOP-SECRET-BYTES" not in raw
        assert got == {
            "in": (tarfile.DIRTYPE, ""), "in/dirlink": (tarfile.SYMTYPE, str(secret)),
            "in/keylink": (tarfile.SYMTYPE, str(secret / "key")), "in/sub": (tarfile.DIRTYPE, ""),
            "in/sub/f": (tarfile.REGTYPE, ""), "in/sub/up": (tarfile.SYMTYPE, "../secret"),
        }
    # Not followed, the top-level symlink to the directory is itself what goes in.
    built = build_input_archive({"/in": tmp_path / "treelink"}, 1 << 20)
    built.file.seek(0)
    with tarfile.open(fileobj=built.file) as tar:
        assert [(m.name, m.type, m.linkname) for m in tar] == [("in", tarfile.SYMTYPE, str(tree))]
    built.close()


# -- pydantic's messages --------------------------------------------------------------------


def test_validation_messages_lose_pydantics_value_error_prefix():
    class Model(BaseModel):
        path: str

        @field_validator("path")
        @classmethod
        def _absolute(cls, value: str) -> str:
            if not value.startswith("/"):
                raise ValueError("must be an absolute container path")
            return value

    with pytest.raises(ValidationError) as info:
        Model(path="x")
    assert "Value error, " in str(info.value)  # pydantic's own wording
    assert describe_validation_error(info.value) == "path: must be an absolute container path"
