"""The dashboard's workers page on workers rq itself cannot read back (fakeredis)."""

from __future__ import annotations

import pytest

pytest.importorskip("rq_dashboard")

from worker.service.dashboard import DashboardWorker  # noqa: E402


def test_a_worker_whose_execution_record_expired_before_its_index_is_listed_idle(fake_redis):
    worker = DashboardWorker(["q"], connection=fake_redis, name="gone-busy")
    worker.register_birth()
    # its executions set names an execution whose record is only a late heartbeat's field
    # (rq's Execution.heartbeat HSETs without checking that the record still exists)
    fake_redis.sadd(worker.executions_key, "job-1:exec-1")
    fake_redis.hset("rq:execution:job-1:exec-1", "last_heartbeat", 1.0)
    assert worker.get_current_job() is None
