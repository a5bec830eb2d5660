"""Every rq-dashboard button against every state an execution's rq job can be in, and the
malformed URLs rq-dashboard 0.9 alone answers 500 to (issue 14, a new user's trial).

The dashboard runs in process (its Flask test client, built as ``rq-dashboard --json
--config worker.dashboard`` builds it) on the real Redis, against a real worker running
real containers. No button answers 500, none writes a second outcome; a refusal is rq-dashboard's
JSON ``{"status": "ERROR", "message": ...}``; a malformed URL answers 4xx with a short message.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from schemas import Keys

pytestmark = pytest.mark.integration

STATES = ("queued", "deferred", "scheduled", "started", "finished", "failed", "canceled", "gone")
BUTTONS = ("requeue", "delete", "cancel", "requeue_all", "empty", "compact", "delete_queue")
REGISTRY_OF = {"gone": "ended"}  # the registry Empty is pressed on; rq's own name otherwise


@pytest.fixture
def app(redis_url, spawn_worker, monkeypatch):
    """rq-dashboard's Flask app on this test's prefix and queue; yields its test client."""
    from rq_dashboard import web
    from rq_dashboard.cli import make_flask_app

    saved = web.config.serializer
    flask_app = make_flask_app("worker.dashboard", None, None, "")
    from worker.observe import dashboard_views
    from worker.observe.dashboard_data import DashboardSettings

    monkeypatch.setattr(dashboard_views, "SETTINGS", DashboardSettings(prefix=spawn_worker.prefix, queue=spawn_worker.queue))
    flask_app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    web.config.serializer = JSONSerializer
    web.setup_rq_connection(flask_app)
    yield flask_app.test_client()
    web.config.serializer = saved


def _running(redis_client, eid: str) -> bool:
    job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
    return job.get_status() == "started" and job.meta.get("status") == "running"


def make_state(state: str, spawn_worker, producer, redis_client, test_image) -> str:
    """An execution whose rq job is in ``state`` ("gone": rq job deleted, outcome kept).
    The states of RAN need the test's worker running (started by the caller)."""
    later = timedelta(hours=1)
    quick = {"engine": {"image": test_image, "cmd": ["true"]}}
    if state == "queued":  # no worker listens on the test's queue
        return producer.submit(quick)
    if state == "scheduled":
        return producer.submit(quick, delay=later)
    if state == "deferred":
        return producer.submit(quick, depends_on=[producer.submit(quick, delay=later)])
    if state == "canceled":
        eid = producer.submit(quick, delay=later)
        assert producer.cancel(eid) == "cancelled"
        return eid
    if state == "failed":  # an rq job rq itself failed (no outcome): what rq-dashboard's Requeue is for
        eid = producer.submit(quick, delay=later)
        job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
        with redis_client.pipeline() as pipe:
            ScheduledJobRegistry(job.origin, connection=redis_client).remove(job, pipeline=pipe)
            job.set_status("failed", pipeline=pipe)
            job.failed_job_registry.add(job, ttl=600, exc_string="Traceback: test", pipeline=pipe)
            pipe.execute()
        return eid
    if state == "started":
        eid = producer.submit({"engine": {"image": test_image, "cmd": ["sleep", "60"]}})
        deadline = time.monotonic() + 30
        while not _running(redis_client, eid):
            assert time.monotonic() < deadline, "the execution never ran"
            time.sleep(0.1)
        return eid
    eid = producer.submit(quick)
    assert producer.wait(eid, timeout=60).status.value == "succeeded"
    if state == "gone":
        # the outcome comes before rq's success transaction: deleting the job between the two
        # races rq's own Job.delete (its execution record vanishes under it)
        job = Job.fetch(eid, connection=redis_client, serializer=JSONSerializer)
        deadline = time.monotonic() + 30
        while job.get_status(refresh=True) != "finished":
            assert time.monotonic() < deadline, "rq never recorded the job finished"
            time.sleep(0.05)
        job.delete()
    return eid


def press(client, button: str, state: str, eid: str, queue: str):
    """POST the button's endpoint, as rq-dashboard's scripts do."""
    path = {
        "requeue": f"/job/{eid}/requeue",
        "delete": f"/job/{eid}/delete",
        "cancel": f"/job/{eid}/cancel",
        "requeue_all": f"/requeue/{queue}",
        "empty": f"/queue/{queue}/{REGISTRY_OF.get(state, state)}/empty",
        "compact": f"/queue/{queue}/compact",
        "delete_queue": f"/queue/{queue}/delete",  # rq-dashboard 0.9 has no such button: 404
    }[button]
    return client.post(path)


def check_button(app, button, state, spawn_worker, producer, redis_client, test_image) -> None:
    """Make an execution in ``state``, press ``button`` on it, check the answer and that it has
    at most one outcome; a started one is then ended (its one outcome: cancelled)."""
    eid = make_state(state, spawn_worker, producer, redis_client, test_image)
    response = press(app, button, state, eid, spawn_worker.queue)
    where = (state, button, response.status_code, response.data[-3000:])
    assert response.status_code < 500, where
    if button == "delete_queue":
        assert response.status_code == 404, where
        return
    body = response.get_json()
    assert body is not None and body["status"] in ("OK", "ERROR", "CANCELLING"), where
    if body["status"] == "ERROR":
        assert body["message"], where
    if button == "requeue" and state != "failed":  # only rq's failed jobs are requeued
        assert body["status"] == "ERROR" and eid in body["message"], where
    if button == "requeue" and state in ("queued", "deferred", "scheduled", "started"):
        assert f"is {state}" in body["message"], where
    if button == "requeue" and state == "failed":
        assert body["status"] == "OK", where
    # never a second outcome for one execution
    assert redis_client.llen(Keys(spawn_worker.prefix).outcome(eid)) <= 1, where
    if state == "started":  # end it: cancel, and the worker writes its one outcome
        if button not in ("cancel", "delete", "empty"):
            producer.cancel(eid)
        assert producer.wait(eid, timeout=60).status.value == "cancelled", where


RAN = ("started", "finished", "gone")  # states a worker brings the job to


@pytest.mark.parametrize("button", BUTTONS)
@pytest.mark.parametrize("state", [s for s in STATES if s not in RAN])
def test_no_button_answers_500_before_a_worker_took_the_job(app, button, state, spawn_worker, producer, redis_client, test_image):
    check_button(app, button, state, spawn_worker, producer, redis_client, test_image)


@pytest.mark.parametrize("state", RAN)
def test_no_button_answers_500_once_a_worker_took_the_job(app, state, spawn_worker, producer, redis_client, test_image):
    """Each button on its own execution, one after the other, on one worker."""
    spawn_worker()
    for button in BUTTONS:
        check_button(app, button, state, spawn_worker, producer, redis_client, test_image)


MALFORMED = [
    # (method, path, status, words of the message)
    ("GET", "/0/data/jobs/{q}/bogusreg/8/dsc/1.json", 404, "bogusreg"),
    ("GET", "/0/view/jobs/{q}/bogusreg/8/dsc/1", 404, "bogusreg"),
    ("GET", "/0/data/jobs/{q}/ended/abc/dsc/1.json", 400, "abc"),
    ("GET", "/0/data/jobs/{q}/ended/8/dsc/x.json", 400, "page"),
    ("GET", "/0/data/jobs/{q}/ended/0/dsc/1.json", 400, "per_page"),
    ("GET", "/0/data/jobs/{q}/ended/8/sideways/1.json", 400, "sideways"),
    ("GET", "/0/view/jobs/{q}/ended/8/sideways/1", 400, "sideways"),
    ("GET", "/5/view/queues", 404, "instance 5"),
    ("GET", "/5/data/queues.json", 404, "instance 5"),
    ("POST", "/queue/no-such-queue-{u}/compact", 404, "no-such-queue"),
    ("POST", "/requeue/no-such-queue-{u}", 404, "no-such-queue"),
    ("POST", "/queue/no-such-queue-{u}/failed/empty", 404, "no-such-queue"),
    ("POST", "/queue/no-such-queue-{u}/ended/empty", 404, "no-such-queue"),
    ("POST", "/queue/{q}/bogusreg/empty", 404, "bogusreg"),
    # ids rq refuses (rq.job.validate_job_id raised ValueError: 500 on the page and the buttons)
    ("GET", "/0/view/job/a%20b", 404, "not an rq job id"),
    ("GET", "/0/view/job/%c3%a9", 404, "not an rq job id"),
    ("GET", "/0/data/job/%ff.json", 404, "not an rq job id"),
    ("POST", "/job/%ff/delete", 404, "not an rq job id"),
    ("POST", "/job/%ff/cancel", 404, "not an rq job id"),
    ("POST", "/job/a%20b/requeue", 404, "not an rq job id"),
]


@pytest.mark.parametrize(("method", "path", "status", "words"), MALFORMED)
def test_malformed_urls_answer_4xx_with_a_short_message(app, method, path, status, words, spawn_worker, unique):
    response = app.open(path.format(q=spawn_worker.queue, u=unique), method=method)
    assert response.status_code == status, (response.status_code, response.data[-3000:])
    text = response.get_data(as_text=True)
    assert words in text and "Traceback" not in text and len(text) < 500, text


def test_compact_on_an_empty_known_queue_is_a_no_op(app, spawn_worker, producer, redis_client, test_image):
    eid = producer.submit({"engine": {"image": test_image, "cmd": ["true"]}}, delay=timedelta(hours=1))
    producer.cancel(eid)  # the queue is known to rq (rq:queues) and its list is empty
    assert Queue(spawn_worker.queue, connection=redis_client).count == 0
    response = app.post(f"/queue/{spawn_worker.queue}/compact")
    assert response.status_code == 200 and response.get_json()["status"] == "OK", response.data


def test_a_genuine_server_error_answers_500_and_is_logged(app, monkeypatch, caplog, producer, test_image):
    """The error handler turns only client mistakes into 4xx: a bug still answers 500, logged."""
    from worker.observe import dashboard_data

    producer.submit({"engine": {"image": test_image, "cmd": ["true"]}}, delay=timedelta(hours=1))  # one queue to count

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in the dashboard")

    monkeypatch.setattr(dashboard_data, "status_counts", broken)
    with caplog.at_level("ERROR"):
        response = app.get("/0/data/queues.json")
    assert response.status_code == 500 and response.get_json()["status"] == "ERROR"
    assert "Traceback" not in response.get_data(as_text=True)
    assert any("a bug in the dashboard" in (r.exc_text or "") + r.getMessage() for r in caplog.records)


def _cli(spawn_worker, redis_url, *args: str) -> str:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_PREFIX": spawn_worker.prefix, "DOCKRQ_QUEUE": spawn_worker.queue}
    done = subprocess.run([str(Path(sys.executable).with_name("dockrq")), "--json", *args], capture_output=True,
                          timeout=60, env=env, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_and_ls_after_the_dashboards_delete(app, spawn_worker, producer, redis_client, redis_url, test_image):
    """Issue 14 trial: after Delete, `dockrq status` showed queue and image as `-` and `dockrq ls`
    no longer listed the execution although its outcome is kept for the retention."""
    import asyncio

    from producer import AsyncProducer

    spawn_worker()
    quick = {"engine": {"image": test_image, "cmd": ["true"]}}
    by_dashboard, by_rq = producer.submit(quick), producer.submit(quick)
    for eid in (by_dashboard, by_rq):
        assert producer.wait(eid, timeout=60).status.value == "succeeded"
    assert app.post(f"/job/{by_dashboard}/delete").get_json()["status"] == "OK"
    Job.fetch(by_rq, connection=redis_client, serializer=JSONSerializer).delete()  # no P:exec:ID:dashboard
    assert not Job.exists(by_dashboard, connection=redis_client) and not Job.exists(by_rq, connection=redis_client)

    view = producer.status(by_dashboard)  # from P:exec:ID:dashboard
    assert (view.state.value, view.queue, view.image) == ("succeeded", spawn_worker.queue, test_image)
    assert view.worker.startswith(spawn_worker.executor_id) and view.node == spawn_worker.executor_id
    assert view.enqueued_at is not None
    other = producer.status(by_rq)  # from the status index and the outcome alone
    digest = producer.wait(by_rq, timeout=5).result.image_digest
    assert (other.state.value, other.queue, other.image) == ("succeeded", spawn_worker.queue, digest) and digest

    async def aio_view():
        async with AsyncProducer(redis_url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as ap:
            return await ap.status(by_dashboard)

    assert asyncio.run(aio_view()).model_dump() == view.model_dump()

    shown = _cli(spawn_worker, redis_url, "status", by_dashboard)
    assert (shown["queue"], shown["image"]) == (spawn_worker.queue, test_image)
    listed = {row["execution_id"]: row for row in _cli(spawn_worker, redis_url, "ls", "--queue", spawn_worker.queue)}
    assert {by_dashboard, by_rq} <= set(listed), listed
    assert (listed[by_dashboard]["state"], listed[by_dashboard]["image"]) == ("succeeded", test_image)
    ids = _cli(spawn_worker, redis_url, "ls", "--queue", spawn_worker.queue, "--status", "succeeded", "-q")
    assert {by_dashboard, by_rq} <= set(ids)


def test_redis_unreachable_answers_503_in_one_line_without_a_traceback(caplog):
    """A new user's trial: with Redis down every page and button answered 500 and logged a
    traceback per request, as for a bug."""
    import socket

    from rq_dashboard import web
    from rq_dashboard.cli import make_flask_app

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = web.config.serializer
    flask_app = make_flask_app("worker.dashboard", None, None, "")
    flask_app.config["RQ_DASHBOARD_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    web.config.serializer = JSONSerializer
    try:
        web.setup_rq_connection(flask_app)
        client = flask_app.test_client()
        with caplog.at_level("WARNING"):
            for method, path in (("GET", "/0/view/job/x1"), ("POST", "/job/x1/delete")):  # a page, a button
                response = client.open(path, method=method)
                text = response.get_data(as_text=True)
                assert response.status_code == 503, (path, response.status_code, text[-500:])
                assert "Redis unreachable" in text and "Traceback" not in text and text.count("\n") <= 1, text
        assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records if r.exc_info]
    finally:
        web.config.serializer = saved
