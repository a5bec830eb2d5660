"""The safe extractor (producer/extract.py) against hostile archives built here: nothing
ever lands outside the destination, and what is refused is said."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from producer.extract import ArchiveRefused, link_stays_inside, safe_extract


def member(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in extra.items():
        setattr(info, key, value)
    return info, data


def archive(*members) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def extract(dest, *members, entries=1000, file_bytes=10**9, **kw):
    return safe_extract(archive(*members), dest, max_entries=entries, max_file_bytes=file_bytes, **kw)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "box" / "dest"


def test_plain_archive_is_extracted_with_safe_modes(dest):
    report = extract(
        dest,
        member("out", tarfile.DIRTYPE, mode=0o555),
        member("out/run", data=b"#!/bin/sh\n", mode=0o4777),
        member("out/rel", tarfile.SYMTYPE, linkname="run"),
        member("out/hard", tarfile.LNKTYPE, linkname="out/run"),
        member("top.txt", data=b"top", mtime=1_000_000),
    )
    assert report.skipped == []
    assert tree(dest) == ["out", "out/hard", "out/rel", "out/run", "top.txt"]
    assert stat.S_IMODE(os.stat(dest / "out/run").st_mode) == 0o755  # no setuid, no group/other write
    assert stat.S_IMODE(os.stat(dest / "out").st_mode) == 0o755  # made writable for its owner
    assert os.stat(dest / "out/hard").st_ino == os.stat(dest / "out/run").st_ino
    assert (dest / "out/rel").read_bytes() == b"#!/bin/sh\n"
    assert os.stat(dest / "top.txt").st_mtime == 1_000_000


@pytest.mark.parametrize(
    "members, why",
    [
        ([member("../escape", data=b"x")], "not a plain relative path"),
        ([member("/abs/file", data=b"x")], "not a plain relative path"),
        ([member("a/../../escape", data=b"x")], "not a plain relative path"),
        ([member("a//b", data=b"x")], "not a plain relative path"),
        ([member("l", tarfile.SYMTYPE, linkname="/etc")], "outside the destination"),
        ([member("l", tarfile.SYMTYPE, linkname="..")], "outside the destination"),
        ([member("a", tarfile.DIRTYPE), member("a/l", tarfile.SYMTYPE, linkname="../../x")], "outside the destination"),
        ([member("s", tarfile.SYMTYPE, linkname="."), member("t", tarfile.SYMTYPE, linkname="s/../x")], "outside the destination"),
        ([member("h", tarfile.LNKTYPE, linkname="etc/passwd")], "not a file extracted here"),
        ([member("h", tarfile.LNKTYPE, linkname="../outside")], "not a file extracted here"),
        ([member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)], "device or special file"),
        ([member("disk", tarfile.BLKTYPE, devmajor=8, devminor=0)], "device or special file"),
        ([member("pipe", tarfile.FIFOTYPE)], "device or special file"),
    ],
)
def test_hostile_entries_are_skipped_with_a_message(dest, members, why):
    report = extract(dest, *members)
    assert report.skipped and why in report.skipped[-1]
    assert all(p.is_relative_to(dest) for p in report.written)
    assert tree(dest.parent) == ["dest"] + [f"dest/{p}" for p in tree(dest)]


def test_nothing_is_written_through_a_symlink(dest, tmp_path):
    outside = tmp_path / "box" / "outside"
    outside.mkdir(parents=True)
    # A symlink the archive makes (allowed: it points inside), then entries through it.
    report = extract(
        dest,
        member("d", tarfile.DIRTYPE),
        member("link", tarfile.SYMTYPE, linkname="d"),
        member("link/through", data=b"x"),
    )
    assert report.skipped == [f"'{dest}/link/through': a directory on its way is a symlink or a file"]
    # A symlink already in the destination, pointing outside it.
    os.symlink(outside, dest / "pre")
    report = extract(dest, member("pre/file", data=b"x"), member("pre", tarfile.DIRTYPE))
    assert "a directory on its way is a symlink" in report.skipped[0]
    assert os.listdir(outside) == []
    # A file in the way of a directory, a directory in the way of a file.
    report = extract(dest, member("f", data=b"x"), member("f/g", data=b"y"), member("d", data=b"z"))
    assert [s.split(":")[0] for s in report.skipped] == [f"'{dest}/f/g'", f"'{dest}/d'"]


def test_an_existing_symlink_is_replaced_not_followed(dest, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    dest.mkdir(parents=True)
    os.symlink(victim, dest / "file")
    extract(dest, member("file", data=b"new"))
    assert victim.read_text() == "keep"
    assert not (dest / "file").is_symlink() and (dest / "file").read_text() == "new"


def test_more_than_announced_stops_the_extraction(dest):
    members = [member("a", data=b"1234"), member("b", data=b"5678")]
    with pytest.raises(ArchiveRefused, match="more entries than the 1 announced"):
        extract(dest, *members, entries=1)
    assert tree(dest) == ["a"]
    with pytest.raises(ArchiveRefused, match="more file bytes than the 6 announced"):
        extract(dest / "x", *members, file_bytes=6)
    assert tree(dest / "x") == ["a"]
    extract(dest / "y", *members, entries=2, file_bytes=8)
    assert tree(dest / "y") == ["a", "b"]


def test_a_damaged_archive_is_refused(dest):
    whole = archive(member("a", data=b"x" * 5000)).getvalue()
    with pytest.raises(ArchiveRefused, match="damaged"):
        safe_extract(io.BytesIO(whole[:2048]), dest, max_entries=10, max_file_bytes=10**6)
    with pytest.raises(ArchiveRefused, match="damaged"):
        safe_extract(io.BytesIO(b"\x01" * 1024), dest, max_entries=10, max_file_bytes=10**6)


def test_rename_selects_and_places_entries(dest):
    report = extract(
        dest,
        member("out", tarfile.DIRTYPE),
        member("out/keep", data=b"k"),
        member("other", data=b"o"),
        rename=lambda name: ("copy" + name[3:]) if name == "out" or name.startswith("out/") else None,
    )
    assert report.skipped == [] and tree(dest) == ["copy", "copy/keep"]


@pytest.mark.parametrize(
    "rel, link, inside",
    [
        ("a", "b", True),
        ("a/b", "../c", True),
        ("a/b", "../../c", False),
        ("a", "/etc", False),
        ("a", "", False),
        ("a/b/c", "../../x/y", True),
        ("a/b", "x/../../c", False),  # '..' after a name: that name may be a symlink
        ("a", "./b", True),
        ("a", "..", False),
    ],
)
def test_link_stays_inside(rel, link, inside):
    assert link_stays_inside(rel, link) is inside
