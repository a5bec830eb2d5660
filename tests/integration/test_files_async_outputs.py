"""AsyncProducer's output files (producer/aio_outputs.py) on a real dockrq-worker, Redis and dockerd:
for one execution, the same archive, files, placements, reports and errors as Producer's."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from pathlib import Path

import pytest

from producer import AsyncProducer, CopyRefused, OutputsUnavailable
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration

MAKE_OUT = (
    "mkdir -p /out/sub && printf '{\"ok\": true}' > /out/r.json && head -c 3000000 /dev/urandom > /out/sub/data.bin "
    "&& ln -s ../r.json /out/sub/rel && ln -s /etc/passwd /out/pw && ln /out/r.json /out/hard && echo one > /single.txt"
)


def _tree(root: Path) -> dict[str, bytes | str]:
    return {
        p.relative_to(root).as_posix(): (
            "-> " + os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        )
        for p in sorted(root.rglob("*"))
    }


def _error(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - compared between the two producers
        return type(exc), str(exc)
    return None


async def _aerror(awaitable):
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 - compared between the two producers
        return type(exc), str(exc)
    return None


def test_async_outputs_are_the_sync_ones_on_a_real_worker(producer, spawn_worker, test_image, tmp_path, redis_url):
    spawn_worker()
    eid = f"aout-{uuid.uuid4().hex[:8]}"
    producer.submit({"execution_id": eid, "engine": {"image": test_image, "cmd": ["sh", "-c", MAKE_OUT]},
                     "outputs": ["/out", "/single.txt"]})
    assert producer.wait(eid, timeout=60).status == ExecutionStatus.SUCCEEDED
    (tmp_path / "afile").write_text("keep")
    for side in ("sync-side", "async-side"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "existing").mkdir()

    def sync_side(root: Path):
        sink, one = io.BytesIO(), io.BytesIO()
        return {
            "archive": producer.outputs_archive(eid),
            "archive_to": (producer.outputs_archive(eid, sink), sink.getvalue()),
            "all": producer.outputs(eid, root / "all").skipped,
            "new": producer.copy_out(eid, "/out/sub", root / "new").skipped,
            "existing": producer.copy_out(eid, "/out", root / "existing").skipped,
            "file": producer.copy_out(eid, "/out/r.json", root / "r.json").skipped,
            "tar": (producer.copy_out_archive(eid, "/out/sub", one), one.getvalue()),
            "missing": _error(lambda: producer.copy_out(eid, "/nothere", root / "x")),
            "onto_file": _error(lambda: producer.copy_out(eid, "/out", tmp_path / "afile")),
            "not_ended": _error(lambda: producer.outputs(f"{eid}-unknown", root / "x")),
        }

    async def async_side(root: Path):
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            sink, one = io.BytesIO(), io.BytesIO()
            return {
                "archive": await ap.outputs_archive(eid),
                "archive_to": (await ap.outputs_archive(eid, sink), sink.getvalue()),
                "all": (await ap.outputs(eid, root / "all")).skipped,
                "new": (await ap.copy_out(eid, "/out/sub", root / "new")).skipped,
                "existing": (await ap.copy_out(eid, "/out", root / "existing")).skipped,
                "file": (await ap.copy_out(eid, "/out/r.json", root / "r.json")).skipped,
                "tar": (await ap.copy_out_archive(eid, "/out/sub", one), one.getvalue()),
                "missing": await _aerror(ap.copy_out(eid, "/nothere", root / "x")),
                "onto_file": await _aerror(ap.copy_out(eid, "/out", tmp_path / "afile")),
                "not_ended": await _aerror(ap.outputs(f"{eid}-unknown", root / "x")),
            }

    want = sync_side(tmp_path / "sync-side")
    got = asyncio.run(async_side(tmp_path / "async-side"))
    # Skip lines name the local destination: the same but for the root given.
    assert {k: str(v).replace(str(tmp_path / "async-side"), "ROOT") for k, v in got.items()} == {
        k: str(v).replace(str(tmp_path / "sync-side"), "ROOT") for k, v in want.items()}
    assert _tree(tmp_path / "async-side") == _tree(tmp_path / "sync-side")

    tree = _tree(tmp_path / "async-side")
    assert tree["all/out/sub/rel"] == "-> ../r.json" and tree["all/out/hard"] == b'{"ok": true}'
    assert len(tree["all/out/sub/data.bin"]) == 3_000_000 and "all/out/pw" not in tree  # hostile symlink skipped
    assert got["all"] == [f"'{tmp_path}/async-side/all/out/pw': a symlink to '/etc/passwd', outside the destination"]
    assert got["archive_to"] == (len(got["archive"]), got["archive"]) and got["tar"][0] == 3
    assert got["missing"][0] is OutputsUnavailable and got["onto_file"][0] is CopyRefused
    assert got["not_ended"][0].__name__ == "ExecutionNotFound"
    assert (tmp_path / "afile").read_text() == "keep"
