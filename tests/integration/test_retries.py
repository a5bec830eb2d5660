"""Retries on failure on real workers and Redis: retry_on, backoff (rq's scheduler), one outcome with the
attempt history, attempt markers in the log, a cancel during the backoff, a worker killed mid-attempt."""

from __future__ import annotations

import json
import threading
import time

import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer.logs import AttemptStart
from scripts.faults import FAST_REAP_ENV
from schemas import ExecutionStatus
from polling import wait_until

pytestmark = pytest.mark.integration

# Counts its runs in /data/n (a bind mount shared by every attempt) and fails until run FIRST_OK.
COUNTING = 'n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo "run $n"; {body}'


def _counting_request(image, eid, data_dir, body, **fields):
    return {
        "execution_id": eid,
        "engine": {"image": image, "cmd": ["sh", "-c", COUNTING.format(body=body)]},
        "mounts": [{"source": str(data_dir), "target": "/data", "read_only": False}],
        **fields,
    }


def _runs(data_dir) -> int:
    path = data_dir / "n"
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else 0  # empty: read while the container rewrites it


class Events:
    """Every event of one execution on P:events, from before it is submitted."""

    def __init__(self, redis_client, channel, execution_id):
        self.statuses: list[str] = []
        self._pubsub = redis_client.pubsub()
        self._pubsub.subscribe(channel)
        self._id = execution_id
        wait_until(lambda: (m := self._pubsub.get_message(timeout=0.1)) is not None and m["type"] == "subscribe", 5, "sub")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            m = self._pubsub.get_message(timeout=0.1)
            if m and m["type"] == "message":
                event = json.loads(m["data"])
                if event["execution_id"] == self._id:
                    self.statuses.append(event["status"])

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


def _mounting_worker(spawn_worker, data_dir, *extra, env=None):
    return spawn_worker("--allow-mount-root", str(data_dir), *extra, env=env or FAST_REAP_ENV)


def test_failed_attempts_are_retried_until_one_succeeds(
    producer, spawn_worker, test_image, unique, data_dir, redis_client, docker_client
):
    _mounting_worker(spawn_worker, data_dir)
    eid = f"flaky-{unique}"
    events = Events(redis_client, producer.keys.events, eid)
    waited: list = []
    producer.submit(_counting_request(
        test_image, eid, data_dir, '[ "$n" -ge 3 ] || exit 7',
        retries=3, retry_on=["failed"], retry_backoff_seconds=[0, 1],
    ))
    waiter = threading.Thread(target=lambda: waited.append(producer.wait(eid, timeout=120)), daemon=True)
    waiter.start()
    outcome = producer.wait(eid, timeout=120)
    waiter.join(10)
    events.close()

    assert (outcome.status, outcome.result.stdout, outcome.attempts) == (ExecutionStatus.SUCCEEDED, "run 3\n", 3)
    assert [(p.attempt, p.status, p.exit_code) for p in outcome.previous_attempts] == [
        (1, ExecutionStatus.FAILED, 7), (2, ExecutionStatus.FAILED, 7)
    ]
    assert waited == [outcome]  # the waiter woke once, on the last attempt's outcome
    assert _runs(data_dir) == 3
    assert redis_client.llen(producer.keys.outcome(eid)) == 1
    finals = [s for s in events.statuses if s in {s.value for s in ExecutionStatus}]
    assert finals == ["succeeded"], events.statuses
    assert "scheduled" in events.statuses  # the second retry waited its backoff in rq's ScheduledJobRegistry
    entries = list(producer.logs(eid, tail=True, follow=False))
    assert [(e.attempt if isinstance(e, AttemptStart) else e.data) for e in entries] == [
        "run 1\n", 2, "run 2\n", 3, "run 3\n"
    ]
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, "rq job finished")
    assert job.get_meta(refresh=True)["attempts"] == 3
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})


def test_retry_on_decides_and_the_last_attempt_is_the_outcome(producer, spawn_worker, test_image, unique, tmp_path):
    runs = {}
    for name in ("default", "timeout"):
        runs[name] = tmp_path / name
        runs[name].mkdir()
    spawn_worker("--allow-mount-root", str(tmp_path), env=FAST_REAP_ENV)
    # retries alone still means "after a lost worker": a failure is final at once.
    plain = producer.submit(_counting_request(test_image, f"plain-{unique}", runs["default"], "exit 7", retries=2))
    slow = producer.submit(_counting_request(
        test_image, f"slow-{unique}", runs["timeout"], "sleep 30", retries=1, retry_on=["timed_out", "failed"],
        timeout_seconds=1,
    ))
    outcomes = producer.wait_many([plain, slow], timeout=120)
    assert (outcomes[plain].status, outcomes[plain].exit_code, outcomes[plain].attempts) == (ExecutionStatus.FAILED, 7, 1)
    assert outcomes[plain].previous_attempts == [] and _runs(runs["default"]) == 1
    assert "attempts" not in producer.connection.lindex(producer.keys.outcome(plain), 0).decode()
    assert (outcomes[slow].status, outcomes[slow].attempts) == (ExecutionStatus.TIMED_OUT, 2)
    assert [p.status for p in outcomes[slow].previous_attempts] == [ExecutionStatus.TIMED_OUT]
    assert _runs(runs["timeout"]) == 2


def test_cancel_during_the_backoff_ends_it_with_the_history(
    producer, spawn_worker, test_image, unique, data_dir, redis_client
):
    _mounting_worker(spawn_worker, data_dir)
    eid = producer.submit(_counting_request(
        test_image, f"backoff-{unique}", data_dir, "exit 7", retries=2, retry_on=["failed"], retry_backoff_seconds=60,
    ))
    wait_until(lambda: producer.status(eid).state.value == "scheduled" and _runs(data_dir) == 1, 60, "waiting to retry")
    assert producer.status(eid).attempt == 2  # the next one, waiting for its backoff
    assert producer.cancel(eid) == "cancelled"
    outcome = producer.wait(eid, timeout=10)
    # attempts: the attempts that ran (one; the cancel came before the second began)
    assert (outcome.status, outcome.attempts) == (ExecutionStatus.CANCELLED, 1)
    assert [(p.attempt, p.status, p.exit_code) for p in outcome.previous_attempts] == [(1, ExecutionStatus.FAILED, 7)]
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.CANCELED
    assert redis_client.zscore(f"rq:scheduled:{spawn_worker.queue}", eid) is None
    assert _runs(data_dir) == 1


def test_worker_killed_mid_attempt_is_retried_once_and_never_twice_at_once(
    producer, spawn_worker, test_image, unique, data_dir, docker_client
):
    doomed = _mounting_worker(spawn_worker, data_dir)
    eid = producer.submit(_counting_request(
        test_image, f"killed-{unique}", data_dir, 'case $n in 1) exit 7;; 2) sleep 300;; esac',
        retries=3, retry_on=["failed", "lost"],
    ))
    wait_until(lambda: _runs(data_dir) == 2 and producer.status(eid).state.value == "running", 60, "attempt 2 running")
    doomed.kill()
    _mounting_worker(spawn_worker, data_dir, "--executor-id", f"{spawn_worker.executor_id}-b")
    seen = []
    deadline = time.monotonic() + 90
    while producer.status(eid).outcome is None:
        assert time.monotonic() < deadline
        seen.append(len(docker_client.containers.list(ignore_removed=True, filters={"label": f"dockrq.execution={eid}"})))
        time.sleep(0.2)
    outcome = producer.wait(eid, timeout=5)
    assert (outcome.status, outcome.result.stdout, outcome.attempts) == (ExecutionStatus.SUCCEEDED, "run 3\n", 3)
    assert [(p.attempt, p.status, p.error_code) for p in outcome.previous_attempts] == [
        (1, ExecutionStatus.FAILED, None), (2, ExecutionStatus.LOST, "worker_lost")
    ]
    assert max(seen) <= 1  # the lost attempt's container was gone before the next one started
    assert _runs(data_dir) == 3
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"dockrq.execution={eid}"})


def test_adopted_attempt_that_fails_is_retried(producer, spawn_worker, test_image, unique, data_dir):
    doomed = _mounting_worker(spawn_worker, data_dir)
    eid = producer.submit(_counting_request(
        test_image, f"adopted-{unique}", data_dir, '[ "$n" -ge 2 ] && exit 0; sleep 3; echo late; exit 7',
        retries=1, retry_on=["failed"],
    ))
    wait_until(lambda: _runs(data_dir) == 1 and producer.status(eid).state.value == "running", 60, "attempt 1 running")
    doomed.kill()
    _mounting_worker(spawn_worker, data_dir)  # same executor id: adopts the running container
    outcome = producer.wait(eid, timeout=90)
    assert (outcome.status, outcome.attempts) == (ExecutionStatus.SUCCEEDED, 2)
    assert [(p.status, p.exit_code) for p in outcome.previous_attempts] == [(ExecutionStatus.FAILED, 7)]
    entries = list(producer.logs(eid, tail=True, follow=False))
    assert [(e.attempt if isinstance(e, AttemptStart) else e.data) for e in entries] == ["run 1\n", "late\n", 2, "run 2\n"]
