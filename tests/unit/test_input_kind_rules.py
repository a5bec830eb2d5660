"""The rules of an input replacing what the container has at its path (refusals.input_kind_refusal),
the stat header's modes (pathstat.kind_of) and the symlink chain (pathstat.what_is_at, fake daemon)."""

from __future__ import annotations

import base64
import json

import pytest

from worker.executor.pathstat import Existing, kind_of, what_is_at
from worker.executor.refusals import InputPathInvalid, input_kind_refusal

DIR = Existing("/d", "directory", "", "directory")
FILE = Existing("/f", "file", "", "file")
LINK_TO_DIR = Existing("/l", "symlink", "/etc", "directory")
LINK_TO_FILE = Existing("/s", "symlink", "busybox", "file")
DANGLING = Existing("/m", "symlink", "/proc/mounts", None)
FIFO = Existing("/p", "fifo", "", "fifo")


@pytest.mark.parametrize(
    ("existing", "kind"),
    [(None, "file"), (None, "directory"), (DIR, "directory"), (FILE, "file"), (FILE, "symlink"), (LINK_TO_DIR, "directory"),
     (LINK_TO_FILE, "file"), (DANGLING, "file"), (DANGLING, "directory"), (FIFO, "file")],
)
def test_same_kind_or_nothing_there_is_let_through(existing, kind):
    assert input_kind_refusal("/x", existing, kind) is None


@pytest.mark.parametrize(
    ("existing", "kind", "says"),
    [
        (DIR, "file", "/x: a directory is there in the container and the input is a file: "),
        (DIR, "symlink", "/x: a directory is there in the container and the input is a symlink: "),
        (LINK_TO_DIR, "hard link", "/x: a symlink to a directory (/l -> /etc) is there"),
        (FILE, "directory", "/x: a file is there in the container and the input is a directory: "),
        (LINK_TO_FILE, "directory", "/x: a symlink to a file (/s -> busybox) is there"),
        (FIFO, "directory", "/x: a fifo is there"),
    ],
)
def test_the_other_kind_is_refused_in_one_line_saying_what_to_do(existing, kind, says):
    refusal = input_kind_refusal("/x", existing, kind)
    assert isinstance(refusal, InputPathInvalid) and refusal.code == "input_path_invalid"
    message = str(refusal)
    assert message.startswith(f"inputs: {says}") and "\n" not in message
    assert ("e.g. /x.d" if kind == "directory" else f"name the {kind}'s own path, e.g. /x/NAME") in message


def test_go_file_modes():
    assert [kind_of(m) for m in (2147484141, 134218239, 420, 1 << 25 | 0o644, 1 << 24, 1 << 26 | 1 << 21)] == [
        "directory", "symlink", "file", "fifo", "socket", "device"]


class _Response:
    def __init__(self, stat):
        self.status_code = 200 if stat else 404
        self.headers = {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode())} if stat else {}

    def close(self):
        pass


class _Api:
    timeout = 5

    def __init__(self, tree):
        self.tree, self.asked = tree, []

    def _url(self, fmt, *args):
        return fmt.format(*args)

    def head(self, url, params, timeout):
        self.asked.append(params["path"])
        return _Response(self.tree.get(params["path"]))


class _Client:
    def __init__(self, tree):
        self.api = _Api(tree)


def test_a_symlink_is_followed_in_the_container_to_what_it_leads_to():
    link = 1 << 27 | 0o777
    tree = {
        "/bin/sh": {"mode": link, "linkTarget": "busybox"},
        "/bin/busybox": {"mode": 0o755, "linkTarget": ""},
        "/a": {"mode": link, "linkTarget": "../b/c"},
        "/b/c": {"mode": link, "linkTarget": "/etc"},
        "/etc": {"mode": 1 << 31 | 0o755, "linkTarget": ""},
        "/loop": {"mode": link, "linkTarget": "/loop"},
        "/mtab": {"mode": link, "linkTarget": "/proc/mounts"},
    }
    client = _Client(tree)
    assert what_is_at(client, "c", "/bin/sh") == Existing("/bin/sh", "symlink", "busybox", "file")
    assert what_is_at(client, "c", "/a") == Existing("/a", "symlink", "../b/c", "directory")
    assert what_is_at(client, "c", "/loop").leads_to is None
    assert what_is_at(client, "c", "/mtab").leads_to is None
    assert what_is_at(client, "c", "/etc") == Existing("/etc", "directory", "", "directory")
    assert what_is_at(client, "c", "/nothing") is None
