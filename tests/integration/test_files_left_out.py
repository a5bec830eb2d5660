"""Output entries are never left out silently: deep paths (up to Linux's PATH_MAX) are collected,
a huge file stops only its own path (flagged ``read_limit``), a limit lowered by the worker's
policy is named with its value, and devices/fifos/runtime paths are reported as skipped, not
missing. Real dockrq-worker, Redis and dockerd; the CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
import uuid
from functools import partial

import pytest

from producer import OutputsUnavailable
from schemas import ExecutionStatus, OutputSkipped

from dockrq_cli import at_once, dockrq, dockrq_at_once

pytestmark = pytest.mark.integration

SEGMENT = "0" * 199 + "1"  # printf "%0200d" 1


def req(image, name, script, **fields):
    eid = f"{name}-{uuid.uuid4().hex[:8]}"
    return {"execution_id": eid, "engine": {"image": image, "cmd": ["sh", "-c", script]}, **fields}


def test_paths_longer_than_1024_bytes_are_collected_listed_and_copied(
    producer, spawn_worker, test_image, tmp_path, redis_url
):
    spawn_worker()
    script = ('a=$(printf "%0200d" 1); p=/o; for i in 1 2 3 4 5 6 7; do p=$p/$a; done; mkdir -p $p && echo deep > $p/f; '
              'cd /o && mkdir x && cd x && for i in $(seq 1 18); do mkdir $a && cd $a; done && echo far > f')
    eid = producer.submit(req(test_image, "deep", script, outputs=["/o"]))
    result = producer.wait(eid, timeout=60).result
    deep = "/o/" + "/".join([SEGMENT] * 7) + "/f"
    far = "/o/x/" + "/".join([SEGMENT] * 18) + "/f"
    assert len(deep) == 1411 and len(far) == 3624
    files = {f.path: f for f in result.output_files}
    assert (files[deep].size, files[far].size) == (5, 4)
    assert (result.outputs_truncated, result.outputs_truncated_by, result.outputs_skipped) == (False, [], [])

    def copied_by_the_producer():
        producer.copy_out(eid, deep, tmp_path / "deep.txt")  # cp takes a path over 1024 bytes
        return producer.outputs(eid, tmp_path / "all")

    # the CLI's cp runs while the Producer copies (each into its own destination)
    got, report = at_once(partial(dockrq, redis_url, spawn_worker, "cp", f"{eid}:{deep}", str(tmp_path / "cli.txt")),
                          copied_by_the_producer)
    assert (tmp_path / "deep.txt").read_text() == "deep\n"
    assert (tmp_path / ("all" + deep)).read_text() == "deep\n"
    assert all("File name too long" in line for line in report.skipped)  # only the local disk's PATH_MAX
    assert (got.returncode, got.stderr) == (0, "")
    assert (tmp_path / "cli.txt").read_text() == "deep\n"


def test_a_huge_file_stops_only_its_own_path_and_is_flagged(producer, spawn_worker, test_image, redis_url):
    spawn_worker()
    script = "mkdir /o && truncate -s 20G /o/a_sparse && echo small > /o/z_small && echo later > /later"
    eid = producer.submit(req(test_image, "sparse", script, outputs=["/o", "/later"]))
    result = producer.wait(eid, timeout=120).result
    assert [(f.path, f.size) for f in result.output_files] == [("/o", 0), ("/later", 6)]
    assert (result.outputs_truncated, result.outputs_truncated_by) == (True, ["bytes", "read_limit"])
    shown = dockrq(redis_url, spawn_worker, "status", eid).stdout
    assert "more than 256 MiB of files over the limit were read past" in shown, shown


def test_a_limit_lowered_by_the_workers_policy_is_named_with_its_value(producer, spawn_worker, test_image, redis_url):
    spawn_worker(env={"DOCKRQ_MAX_OUTPUT_FILES_BYTES": "1k"})
    script = "mkdir /o && head -c 2000 /dev/zero > /o/big"
    capped = producer.submit(req(test_image, "capped", script, outputs=["/o"], output_files_limit_bytes=100 * 2**20))
    own = producer.submit(req(test_image, "own", script, outputs=["/o"], output_files_limit_bytes=512))
    for eid, limit, by_policy in ((capped, 1024, True), (own, 512, False)):
        result = producer.wait(eid, timeout=60).result
        assert (result.output_files_limit_bytes, result.output_files_limit_capped) == (limit, by_policy)
        assert result.outputs_truncated_by == ["bytes"]
    capped_shown, own_shown = dockrq_at_once(redis_url, spawn_worker, (("status", capped), {}), (("status", own), {}))
    shown = capped_shown.stdout
    assert ("over the output files limit of 1k set by the worker's policy (DOCKRQ_MAX_OUTPUT_FILES_BYTES), "
            "lower than the request's output_files_limit_bytes") in shown, shown
    shown = own_shown.stdout
    assert "over the output files limit of 512 (output_files_limit_bytes)" in shown, shown


def test_devices_fifos_and_runtime_paths_are_skipped_not_missing(redis_url, producer, spawn_worker, test_image, tmp_path):
    spawn_worker()
    eid = f"special-{uuid.uuid4().hex[:8]}"
    got = dockrq(redis_url, spawn_worker, "submit", "--id", eid, "--output", "/dev/null", "--output", "/o",
                 "--output", "/missing", test_image, "sh", "-c", "mkdir /o && mkfifo /o/pipe && echo ok > /o/ok")
    assert got.returncode == 0, got.stderr
    assert got.stderr.splitlines() == [
        "dockrq: output /missing did not exist in the container",
        "dockrq: output '/dev/null' left out: a runtime path, there only while the container ran: not collected",
        "dockrq: output '/o/pipe' left out: a fifo: not collected",
        "dockrq: output files were left out: devices, fifos, sockets or runtime paths (/dev, /proc, /sys), "
        "which are never collected",
        f"dockrq: 2 output entries kept; get them with dockrq cp {eid}:PATH DEST",
    ]
    outcome = producer.wait(eid, timeout=10)
    result = outcome.result
    assert outcome.status == ExecutionStatus.SUCCEEDED
    assert result.outputs_missing == ["/missing"]
    assert result.outputs_skipped == [
        OutputSkipped(path="/dev/null", type="runtime", reason="special"),
        OutputSkipped(path="/o/pipe", type="fifo", reason="special"),
    ]
    assert (result.outputs_truncated, result.outputs_truncated_by) == (True, ["special"])
    assert [f.path for f in result.output_files] == ["/o", "/o/ok"]
    with pytest.raises(OutputsUnavailable, match="/dev/null was not collected: a runtime path"):
        producer.copy_out(eid, "/dev/null", tmp_path / "x")
