"""Unit tests of the observability pieces: the status index written with the outcome,
JSON log lines, the metrics hooks and the dashboard's reading of executions (fakeredis)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from schemas import JOB_FUNCTION, ExecutionResult, ExecutionStatus, Keys, Outcome


def _job(fake_redis, eid: str, env: dict | None = None):
    queue = Queue("q", connection=fake_redis, serializer=JSONSerializer)
    return queue.enqueue_call(
        JOB_FUNCTION, args=({"execution_id": eid, "engine": {"image": "busybox", "env": env or {}}},),
        job_id=eid, meta={"execution_id": eid, "image": "busybox", "status": "queued"},
    )


def _channels(fake_redis, job):
    from worker.execution.channels import ExecutionChannels

    return ExecutionChannels(fake_redis, Keys("p"), job.id, worker="w1", retention_seconds=60, log_stream_maxlen=10, job=job)


def test_the_first_outcome_indexes_the_execution_by_queue_and_status_once(fake_redis):
    job = _job(fake_redis, "e1")
    failed = Outcome.from_result(ExecutionResult(execution_id="e1", status=ExecutionStatus.FAILED, exit_code=3))
    assert _channels(fake_redis, job).finish(failed)
    lost = Outcome.failure("e1", ExecutionStatus.LOST, "worker_lost", "gone")
    assert not _channels(fake_redis, job).finish(lost)  # second writer: neither outcome nor index entry
    keys = Keys("p")
    assert fake_redis.zrange(keys.ended("q", "failed"), 0, -1) == [b"e1"]
    assert not fake_redis.exists(keys.ended("q", "lost"))
    job.refresh()
    assert (job.meta["status"], job.meta["exit_code"]) == ("failed", 3)


def test_index_entries_older_than_the_retention_leave_it(fake_redis):
    from schemas import WRITE_OUTCOME_LUA

    key = Keys("p").ended("q", "succeeded")
    fake_redis.zadd(key, {"old": time.time() - 120})
    fake_redis.eval(WRITE_OUTCOME_LUA, 2, "p:exec:new:outcome", key, "{}", 60, "new", time.time())
    assert fake_redis.zrange(key, 0, -1) == [b"new"]
    assert fake_redis.eval(WRITE_OUTCOME_LUA, 1, "p:exec:x:outcome", "{}", 60) == 1  # the one-key form still works


def test_json_log_lines_name_the_execution_however_it_is_known():
    from worker.observe.logformat import JsonFormatter, execution_context

    formatter = JsonFormatter()
    logger = logging.getLogger("dockrq-test")

    def line(msg, *args, **kwargs):
        record = logger.makeRecord("dockrq-test", logging.INFO, __file__, 1, msg, args, None, **kwargs)
        return json.loads(formatter.format(record))

    assert line("idle")["execution_id"] is None
    assert line("execution %s: failed (exit 3)", "abc-1")["execution_id"] == "abc-1"
    assert line("Worker %s: %s: %s", "w", "q", "job-9")["execution_id"] == "job-9"
    with execution_context("ctx-7"):
        assert line("Job OK")["execution_id"] == "ctx-7"
    seen = []
    thread = threading.Thread(target=lambda: seen.append(line("log batch shipped")), name="dockrq-logs-thr-3")
    thread.start()
    thread.join()
    assert seen[0]["execution_id"] == "thr-3"
    assert {"ts", "level", "logger", "message", "process", "thread"} <= line("x").keys()


def test_metric_hooks_are_free_until_enabled_then_count():
    from prometheus_client import CollectorRegistry

    from worker.observe import metrics

    if metrics.enabled():  # pragma: no cover - another test of this process enabled them
        pytest.skip("instruments already enabled in this process")
    metrics.outcome_written(Outcome.failure("x", ExecutionStatus.LOST, "worker_lost", ""))  # no-op
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        started = ExecutionResult(execution_id="x", status=ExecutionStatus.SUCCEEDED, exit_code=0)
        from datetime import datetime, timedelta, timezone

        now = datetime.now(timezone.utc)
        result = started.model_copy(update={"started_at": now - timedelta(seconds=2), "finished_at": now})
        metrics.outcome_written(Outcome.from_result(result))  # image present: no pull observed
        pulled = result.model_copy(update={"execution_id": "y", "pull_seconds": 1.5})
        metrics.outcome_written(Outcome.from_result(pulled))
        with metrics.running():
            assert registry.get_sample_value("dockrq_executions_running") == 1
        from types import SimpleNamespace

        metrics.reaped(SimpleNamespace(adopted=["a"], requeued=["b"], unstuck=["c"], lost=[], removed_containers=["d"], settled=[]))
        value = registry.get_sample_value
        assert value("dockrq_executions_ended_total", {"status": "succeeded"}) == 2
        assert value("dockrq_executions_ended_total", {"status": "lost"}) == 0
        assert value("dockrq_execution_run_seconds_sum", {"status": "succeeded"}) == pytest.approx(4.0)
        assert value("dockrq_image_pull_seconds_count") == 1
        assert value("dockrq_image_pull_seconds_sum") == pytest.approx(1.5)
        assert value("dockrq_executions_running") == 0
        assert value("dockrq_reaper_actions_total", {"action": "requeued"}) == 2
        assert value("dockrq_reaper_actions_total", {"action": "orphan_removed"}) == 1
    finally:
        metrics._instruments = None


def test_the_dashboard_reads_an_ended_execution_with_its_secrets_masked(fake_redis):
    from worker.observe import dashboard_data as data

    settings = data.DashboardSettings(prefix="p", queue="q", retention_seconds=60)
    job = _job(fake_redis, "e2", env={"TOKEN": "s3cr3t-value", "N": "1"})
    result = ExecutionResult(
        execution_id="e2", status=ExecutionStatus.FAILED, exit_code=3,
        stdout="".join(f"line {i}\n" for i in range(100)) + "token=s3cr3t-value\n", stderr="bad\n",
    )
    _channels(fake_redis, job).finish(Outcome.from_result(result))
    job.refresh()
    view = data.execution(job, fake_redis, settings)
    assert (view["status"], view["label"], view["exit_code"]) == ("failed", "failed · exit 3", 3)
    assert view["stdout"].endswith("token=***\n") and view["stdout"].count("\n") == data.TAIL_LINES
    assert "s3cr3t" not in json.dumps(view)
    assert data.status_counts(fake_redis, settings, "q")["failed"] == 1
    total, page = data.ended_page(fake_redis, settings, "q", data.ALL_ENDED, 0, 10, newest_first=True)
    assert total == 1 and page[0][:2] == ("e2", "failed")
    # the failed status's list is "failed-outcome": rq-dashboard's "failed" is rq's FailedJobRegistry
    assert data.ended_page(fake_redis, settings, "q", data.FAILED_OUTCOME, 0, 10, newest_first=True) == (total, page)
    assert "failed" not in data.PSEUDO_REGISTRIES and data.REGISTRY_OF_STATUS["failed"] == "failed-outcome"
    assert data.ended_page(fake_redis, settings, "q", "timed_out", 0, 10, newest_first=True) == (0, [])
