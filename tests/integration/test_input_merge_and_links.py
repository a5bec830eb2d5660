"""Input directories merged onto existing directories and hard links inside input directories, on a
real dockrq-worker, Redis and dockerd (a new user's trial, issue 11): the directory merged into keeps
its owner and mode (on the host for a bind mount; /etc stays root's), and hard links arrive as hard
links (one inode), as docker cp keeps them."""

from __future__ import annotations

import os
import stat

import pytest

from dockrq_cli import dockrq_at_once

pytestmark = pytest.mark.integration


def test_a_directory_merged_onto_one_keeps_its_owner_and_mode_and_hard_links_stay(
    redis_url, spawn_worker, test_image, tmp_path
):
    mnt = tmp_path / "bind"
    (mnt / "own").mkdir(parents=True)
    os.chmod(mnt / "own", 0o755)
    (mnt / "own" / "pre").write_text("a\n")
    (mnt / "own" / "deeper").mkdir(mode=0o755)
    before = os.stat(mnt / "own")
    (tmp_path / "ownin" / "sub").mkdir(parents=True)
    (tmp_path / "ownin" / "new").write_text("n\n")
    (tmp_path / "ownin" / "sub" / "deep").write_text("d\n")
    (tmp_path / "ownin" / "deeper").mkdir(mode=0o750)
    os.chmod(tmp_path / "ownin", 0o700)
    (tmp_path / "etc2").mkdir()
    (tmp_path / "etc2" / "app.conf").write_text("c\n")
    os.chmod(tmp_path / "etc2", 0o700)
    (tmp_path / "hl" / "sub").mkdir(parents=True)
    (tmp_path / "hl" / "a").write_text("same\n")
    os.link(tmp_path / "hl" / "a", tmp_path / "hl" / "b")
    os.link(tmp_path / "hl" / "a", tmp_path / "hl" / "sub" / "c")
    spawn_worker(env={"DOCKRQ_ALLOWED_MOUNT_ROOTS": str(mnt)})
    merged, etc, links = dockrq_at_once(
        redis_url, spawn_worker,
        (("submit", "-u", "1000:1000", "--input", f"{tmp_path / 'ownin'}:/m/own", "-v", f"{mnt}:/m:rw", test_image,
          "sh", "-c", "stat -c '%u:%g %a %n' /m/own /m/own/new /m/own/sub && cat /m/own/pre"), {}),
        (("submit", "-u", "1000:1000", "--input", f"{tmp_path / 'etc2'}:/etc", test_image,
          "sh", "-c", "stat -c '%u:%g %a' /etc /etc/app.conf && touch /etc/x 2>/dev/null || echo not writable"), {}),
        (("submit", "--input", f"{tmp_path / 'hl'}:/in", test_image,
          "sh", "-c", "stat -c '%i %h' /in/a /in/b /in/sub/c | uniq -c | sed 's/^ *//; s/ [0-9]* / /' && cat /in/b"), {}),
    )
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout == "0:0 755 /m/own\n1000:1000 644 /m/own/new\n1000:1000 755 /m/own/sub\na\n"
    after = os.stat(mnt / "own")  # on the host: root's, 0755, as before
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_uid, before.st_gid, 0o755)
    assert os.stat(mnt / "own" / "new").st_uid == 1000 and (mnt / "own" / "pre").read_text() == "a\n"
    # an existing directory deeper down takes the input's, as with docker cp (README)
    deeper = os.stat(mnt / "own" / "deeper")
    assert (deeper.st_uid, stat.S_IMODE(deeper.st_mode)) == (1000, 0o750)
    assert (etc.returncode, etc.stdout) == (0, "0:0 755\n1000:1000 644\nnot writable\n"), etc.stderr
    # three names, one inode with three links
    assert (links.returncode, links.stdout) == (0, "3 3\nsame\n"), links.stderr
