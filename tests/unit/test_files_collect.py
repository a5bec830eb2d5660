"""worker.executor.collect.Collector on crafted ``GET /containers/ID/archive`` streams: what
Docker cannot be made to produce from a container (names over PATH_MAX, names that are not
plain) is left out and flagged, never silently, and the rest of the stream is still read."""

from __future__ import annotations

import io
import tarfile

import pytest

from schemas import OutputSkipped
from worker.executor import collect


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_content(self, size: int):
        for i in range(0, len(self.data), size):
            yield self.data[i : i + size]

    def close(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.data = b""
        self.committed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        raise AssertionError("not aborted")


def _tar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def streams(monkeypatch):
    served: dict[str, bytes] = {}
    monkeypatch.setattr(collect, "archive_stream", lambda client, cid, path: _Response(served[path]) if path in served else None)
    return served


def test_names_over_path_max_or_not_plain_are_flagged_unsupported_and_the_rest_kept(streams):
    fits = "o/" + "a" * 4000  # container path /o/aaa...: 4003 bytes, within PATH_MAX
    over = "o/" + "b" * 4095  # 4098 bytes with its '/': over
    streams["/o"] = _tar((over, b"x" * 1000), ("o/../escape", b"y"), (fits, b"kept"), ("o/z", b"z"))
    sink = _Sink()
    collector = collect.Collector(None, "cid", 1 << 20, sink)
    collector.collect("/o")
    collector.finish()
    assert [(f.path, f.size) for f in collector.files] == [("/" + fits, 4), ("/o/z", 1)]
    assert (collector.truncated, collector.truncated_by) == (True, ["unsupported"])
    assert collector.skipped_entries == [
        OutputSkipped(path="/" + over, type="file", reason="unsupported"),
        OutputSkipped(path="/o/../escape", type="file", reason="unsupported"),
    ]
    with tarfile.open(fileobj=io.BytesIO(sink.data)) as tar:
        assert [m.name for m in tar] == [fits, "o/z"]


def test_past_the_skip_bound_only_that_path_stops_and_it_is_flagged(streams, monkeypatch):
    monkeypatch.setattr(collect, "MAX_SKIPPED_BYTES", 100)
    streams["/o"] = _tar(("o/a_big", b"x" * 500), ("o/z_small", b"s"))
    streams["/p"] = _tar(("p", b"p"))
    collector = collect.Collector(None, "cid", 10, _Sink())
    collector.collect("/o")
    collector.collect("/p")
    collector.finish()
    assert [f.path for f in collector.files] == ["/p"]
    assert collector.truncated_by == ["bytes", "read_limit"]
