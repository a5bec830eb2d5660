"""scripts/bench.py runs end to end on tiny sizes and reports every figure.

No timing thresholds here (the machine is noisy): only that each key is present,
the numbers are sane, and the run leaves no worker, container or Redis key behind.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = [
    "throughput_ratio_c1", "throughput_ratio_c4", "overhead_p50_ms", "enqueue_per_s", "wake_p50_ms",
    "log_follow_ratio", "lost_lines", "worker_peak_rss_mb", "files_in_ratio", "files_out_ratio", "pull_ratio",
    "redis_commands_per_execution", "redis_bytes_per_execution", "idle_worker_commands_per_s",
    "worker_cpu_ms_per_execution",
]
POSITIVE = [
    "raw_c1_per_s", "raw_c2_per_s", "raw_c4_per_s", "dockrq_c1_per_s", "dockrq_c2_per_s", "dockrq_c4_per_s",
    "raw_c1_p50_ms", "raw_c1_p95_ms", "dockrq_c1_p50_ms", "dockrq_c1_p95_ms", "dockrq_c4_p95_ms",
    "throughput_ratio_c1", "throughput_ratio_c2", "throughput_ratio_c4", "enqueue_per_s", "wake_p50_ms",
    "wake_p95_ms", "log_raw_lines_per_s", "log_follow_lines_per_s", "log_follow_ratio",
    "worker_peak_rss_mb", "worker_baseline_rss_mb", "files_in_mb_per_s", "files_out_mb_per_s",
    "docker_cp_in_mb_per_s", "docker_cp_out_mb_per_s", "files_in_ratio", "files_out_ratio", "pull_ratio",
    "redis_commands_per_execution", "redis_bytes_per_execution", "idle_worker_commands_per_s",
    "worker_cpu_ms_per_execution", "producer_cpu_ms_per_execution", "raw_cpu_ms_per_execution",
]


def test_quick_bench_reports_every_figure_and_cleans_up(tmp_path, redis_url, redis_client, docker_client, test_image):
    out = tmp_path / "bench.json"
    args = [
        sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--samples", "3", "--log-lines", "500",
        "--rss-bytes", "4m", "--enqueue", "200", "--enqueue-batch", "100", "--wake-samples", "5", "--pull-mb", "4",
        "--cost-executions", "3", "--idle-seconds", "2",
        "--files-mib", "2", "--files-rounds", "1",
        "--redis-url", redis_url, "--image", test_image, "--json", str(out),
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "targets (issues 5 and 14)" in proc.stdout  # the readable table

    result = json.loads(out.read_text())
    for key in REQUIRED + POSITIVE + ["duplicated_lines", "overhead_p95_ms", "overhead_p50_paired_ms", "raw_lost_lines"]:
        assert key in result, key
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), (key, result[key])
    for key in POSITIVE:
        assert result[key] > 0, (key, result[key])
    # every line the container printed came through each path exactly once
    assert result["lost_lines"] == 0 and result["duplicated_lines"] == 0 and result["raw_lost_lines"] == 0
    assert result["worker_peak_rss_mb"] >= result["worker_baseline_rss_mb"]
    per_c = result["details"]["concurrency"]
    assert set(per_c) == {"1", "2", "4"}
    for row in per_c.values():
        assert row["raw"]["n"] == row["dockrq"]["n"] == 3
        assert sum(len(r["dockrq"]["latencies_ms"]) for r in row["rounds"]) == 3
        assert row["raw"]["p95_ms"] >= row["raw"]["p50_ms"] > 0
    assert result["details"]["enqueue"]["queue_length"] == 200 + 100  # + the warm-up batch
    cost = result["details"]["cost"]
    assert cost["executions"] == 3 and cost["commands_by_name_per_execution"]
    # the last execution's keys were measured one by one: its outcome at least
    assert cost["memory_usage_of_one_execution"]["total_of_keys"] > 0
    assert any(k.endswith(":outcome") for k in cost["memory_usage_of_one_execution"])
    assert result["files_mib"] == 2 and all(len(v) == 1 for v in result["details"]["files"]["seconds"].values())
    assert set(result["targets"]) >= set(REQUIRED)
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())

    # nothing left behind: workers, containers, Redis keys
    token = result["run"]["token"]
    assert not [p for p in psutil.process_iter(["cmdline"]) if f"bench-{token}" in " ".join(p.info["cmdline"] or [])]
    for label in (f"dockrq.bench={token}", f"dockrq.executor=bench-{token}"):
        assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": label})
    assert not list(redis_client.scan_iter(match=f"*{token}*"))
    assert not [m for m in redis_client.smembers("rq:workers") if token.encode() in m]
    # ... nor the loopback registry of its pull figure (scripts/bench_pull.py starts and stops it)
    registries = [p for p in psutil.process_iter(["name", "cmdline", "status"]) if p.info["name"] == "docker-registry"]
    assert not [
        p for p in registries
        if p.info["status"] != psutil.STATUS_ZOMBIE and "dockrq-bench-registry-" in " ".join(p.info["cmdline"] or [])
    ]
