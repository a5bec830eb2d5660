"""The README's file commands, end to end: ``dockrq submit --input ... --output ... --output-dir``
and ``dockrq cp`` as subprocesses against a real dockrq-worker, Redis and dockerd."""

from __future__ import annotations

import json
import uuid

import pytest

from dockrq_cli import dockrq, dockrq_at_once

pytestmark = pytest.mark.integration


def test_submit_with_inputs_and_outputs_then_cp(redis_url, spawn_worker, test_image, tmp_path):
    spawn_worker()
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "nested" / "numbers.txt").write_text("3\n1\n2\n")
    (src / "co:lon").write_text("c\n")  # a name with ':' comes back out and cp takes it (as docker cp)
    eid = f"cli-{uuid.uuid4().hex[:8]}"
    got = dockrq(
        redis_url, spawn_worker, "submit", "--id", eid, "--input", f"{src}:/work/in",
        "--output", "/work/out", "--output", "/work/missing", "--output-dir", str(tmp_path / "results"),
        test_image, "sh", "-c", "mkdir /work/out && sort /work/in/nested/numbers.txt > /work/out/sorted.txt && cp /work/in/co:lon /work/out/ && echo done",
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == "done\n"
    assert got.stderr == "dockrq: output /work/missing did not exist in the container\n"
    assert (tmp_path / "results/work/out/sorted.txt").read_text() == "1\n2\n3\n"

    # Everything below reads the ended execution (or refuses a bad command line) independently:
    # the CLI calls run at the same time.
    (tmp_path / "here").mkdir()
    errors = (
        (("cp", f"{eid}:/work/missing", "x"), 1, f"dockrq: /work/missing did not exist in the container of {eid}\n"),
        (("cp", "nocolon", "x"), 125,  # a bad command line: docker's usage exit code
         "dockrq: Invalid value for 'ID:CONTAINER_PATH': 'nocolon' is not ID:CONTAINER_PATH. See 'dockrq cp --help'.\n"),
        (("cp", "unknown-id:/x", "x"), 1, "dockrq: no such execution: unknown-id\n"),
        (("submit", "--input", f"{tmp_path}/nope:/in", test_image, "true"), 125,
         f"dockrq: invalid request: inputs: {tmp_path}/nope: No such file or directory\n"),
        (("submit", "--input", "no-colon", test_image, "true"), 125,
         "dockrq: invalid request: inputs: 'no-colon' is not LOCAL_PATH:CONTAINER_PATH\n"),
        (("submit", "-d", "--output", "/o", "--output-dir", "d", test_image, "true"), 125,
         "dockrq: invalid request: --output-dir: needs an attached submit (without -d); use dockrq cp ID:PATH DEST later\n"),
        (("submit", "--output", "o", test_image, "true"), 125,
         "dockrq: invalid request: outputs: must be an absolute container path: 'o'\n"),
    )
    into_dir, as_name, as_json, waited, shown, colon, *refused = dockrq_at_once(
        redis_url, spawn_worker,
        (("cp", f"{eid}:/work/out", str(tmp_path / "here")), {}),
        (("cp", f"{eid}:/work/out/sorted.txt", "copy.txt"), {"cwd": tmp_path}),
        (("--json", "cp", f"{eid}:/work/out", str(tmp_path / "j")), {}),
        (("--json", "wait", eid), {}),
        (("status", eid), {}),
        (("cp", f"{eid}:/work/out/co:lon", "colon.txt"), {"cwd": tmp_path}),
        *((args, {"cwd": tmp_path}) for args, _, _ in errors),
    )

    # Later, like docker cp: into an existing directory, or as a new name.
    assert (into_dir.returncode, into_dir.stderr) == (0, "")
    assert (tmp_path / "here/out/sorted.txt").read_text() == "1\n2\n3\n"
    assert as_name.returncode == 0 and (tmp_path / "copy.txt").read_text() == "1\n2\n3\n"
    assert (colon.returncode, colon.stderr, (tmp_path / "colon.txt").read_text()) == (0, "", "c\n")
    written = [str(tmp_path / "j"), str(tmp_path / "j/co:lon"), str(tmp_path / "j/sorted.txt")]
    assert json.loads(as_json.stdout) == {"written": written, "skipped": []}

    # The outcome lists what was collected.
    status = json.loads(waited.stdout)
    assert [f["path"] for f in status["result"]["output_files"]] == ["/work/out", "/work/out/co:lon", "/work/out/sorted.txt"]
    assert status["result"]["outputs_missing"] == ["/work/missing"]
    assert "outputs    3 entries, 2 files, 8 bytes; missing: /work/missing" in shown.stdout

    # One-line errors, never a traceback.
    for (args, code, message), got in zip(errors, refused, strict=True):
        assert (got.returncode, got.stderr) == (code, message), args


def test_submit_refuses_inputs_over_max_input(redis_url, spawn_worker, test_image, tmp_path, redis_client):
    (tmp_path / "f").write_bytes(b"x" * 2048)
    eid = f"cli-big-{uuid.uuid4().hex[:8]}"
    import os

    env = {**os.environ, "DOCKRQ_MAX_INPUT_BYTES": "1k"}
    got = dockrq(redis_url, spawn_worker, "submit", "--id", eid, "--input", f"{tmp_path}/f:/in/f", test_image, "true", env=env)
    assert got.returncode == 125
    assert got.stderr == (
        "dockrq: invalid request: inputs: at least 2048 bytes of files, above the limit of 1024 bytes "
        "(max_input_bytes, DOCKRQ_MAX_INPUT_BYTES)\n"
    )
    assert redis_client.keys(f"*{eid}*") == []
