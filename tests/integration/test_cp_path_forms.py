"""``dockrq cp`` with the container path forms ``docker cp`` takes, on a real worker, Redis and
dockerd: relative to ``/``, a trailing ``/`` for a directory, ``--output /o/`` collected as ``/o``;
malformed ones are usage errors (125, one line)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from schemas import ExecutionStatus

from dockrq_cli import dockrq, dockrq_at_once

pytestmark = pytest.mark.integration


def state(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cp_accepts_docker_cp_path_forms(producer, spawn_worker, redis_url, test_image, tmp_path):
    spawn_worker()
    eid = f"forms-{uuid.uuid4().hex[:8]}"
    got = dockrq(redis_url, spawn_worker, "submit", "--id", eid, "--output", "/work/out/", test_image, "sh", "-c",
                 "mkdir -p /work/out && echo a > /work/out/a.txt")
    assert got.returncode == 0, got.stderr
    outcome = producer.wait(eid, timeout=10)
    assert outcome.status is ExecutionStatus.SUCCEEDED
    assert [f.path for f in outcome.result.output_files] == ["/work/out", "/work/out/a.txt"]
    sources, malformed = ("work/out", "/work/out/", "work//./out/"), ("/work/../out", "/work/out/.", "/" + "x" * 5000)  # ':' is taken (test_files_cli)
    # independent reads of the same outputs (each into its own destination), run at the same time
    *copied, streamed, not_a_dir, refused_0, refused_1, refused_2 = dockrq_at_once(
        redis_url, spawn_worker,
        *((("cp", f"{eid}:{source}", f"o{n}"), {"cwd": tmp_path}) for n, source in enumerate(sources)),
        (("cp", f"{eid}:work/out/a.txt", "-"), {"text": False}),
        (("cp", f"{eid}:/work/out/a.txt/", "f"), {"cwd": tmp_path}),
        *((("cp", f"{eid}:{source}", "x"), {"cwd": tmp_path}) for source in malformed),
    )
    for n, (source, got) in enumerate(zip(sources, copied, strict=True)):
        assert (got.returncode, got.stderr) == (0, ""), source
        assert state(tmp_path / f"o{n}") == {"a.txt": b"a\n"}, source
    got = streamed
    assert got.returncode == 0 and got.stdout  # the tar stream of the file
    got = not_a_dir
    assert (got.returncode, got.stderr) == (1, "dockrq: '/work/out/a.txt/': not a directory (a trailing '/' names one)\n")
    for source, got in zip(malformed, (refused_0, refused_1, refused_2), strict=True):
        assert got.returncode == 125 and len(got.stderr.splitlines()) == 1, (source, got.stderr)
    assert not (tmp_path / "x").exists() and not (tmp_path / "f").exists()
