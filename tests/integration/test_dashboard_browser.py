"""The dashboard as an operator sees it: rq-dashboard started by scripts/dashboard.sh,
read in a real headless browser (Debian's chromium, driven through chromium-driver
by selenium), against a real worker running real containers.

Checks the rendered pages, not only the JSON: counts per outcome on the queues
page, each row's ending in the job list, an execution's page (status, exit code,
image, worker, node, durations, output tail with the secret masked), the Jobs tab
landing on dockrq's queue, and the buttons' safe effects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from schemas import ExecutionStatus, Keys, Outcome

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "browser-secret-4242"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(redis_url, spawn_worker, tmp_path):
    """scripts/dashboard.sh on this test's prefix and queue; yields its base URL."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "dashboard.sh"), "--poll-interval", "500"],
        env={**os.environ, "DOCKRQ_REDIS_URL": redis_url, "DOCKRQ_DASHBOARD_PORT": str(port),
             "DOCKRQ_PREFIX": spawn_worker.prefix, "DOCKRQ_QUEUE": spawn_worker.queue},
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/0/data/queues.json", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rq-dashboard did not come up:\n" + log_path.read_text())
            time.sleep(0.2)
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (run scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver, log_output=str(tmp_path / "chromedriver.log")), options=options)
    b.set_page_load_timeout(30)
    yield b
    b.quit()


def wait_for(browser, css: str, predicate=lambda els: bool(els), timeout: float = 30):
    """The elements matching ``css`` once ``predicate(elements)`` holds (the pages fill in by AJAX)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while True:
        els = browser.find_elements(By.CSS_SELECTOR, css)
        try:
            if predicate(els):
                return els
        except Exception:  # noqa: BLE001 - stale elements while the page re-renders
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{css}: not as expected in {browser.current_url}:\n{browser.page_source[-4000:]}")
        time.sleep(0.2)


def wait_js(browser, script: str, predicate, timeout: float = 30):
    """The value of ``script`` (JavaScript returning JSON-able data, read in one go so the
    page's periodic re-rendering cannot change it halfway) once ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{script}: {value!r} in {browser.current_url}:\n{browser.page_source[-4000:]}")
        time.sleep(0.2)


def pairs(css: str, key: str, value: str = "textContent") -> str:
    """JavaScript: [[el.key, el.value], ...] of the elements matching ``css``."""
    return (f"return Array.from(document.querySelectorAll({json.dumps(css)}))"
            f".map(function(e) {{ return [e.getAttribute({json.dumps(key)}), e.{value}.trim()]; }});")


def post(url: str) -> dict:
    return json.loads(urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).read())


def test_the_dashboard_tells_endings_apart_and_its_buttons_are_safe(
    dashboard, browser, spawn_worker, producer, redis_client, test_image
):
    from selenium.webdriver.common.by import By

    from worker.execution.channels import ExecutionChannels

    spawn_worker("--max-memory", "64m", stop_grace=0.2)  # the timed-out and cancelled containers stop sooner
    image = {"image": test_image}
    ids = {
        "succeeded": producer.submit({"engine": {**image, "cmd": ["echo", "hello"]}}),
        "failed": producer.submit({"engine": {
            **image, "cmd": ["sh", "-c", 'echo "token=$TOKEN"; echo bad >&2; exit 3'], "env": {"TOKEN": SECRET}}}),
        "timed_out": producer.submit({"engine": {**image, "cmd": ["sleep", "30"]}, "timeout_seconds": 0.5}),
        "rejected": producer.submit({"engine": {**image, "cmd": ["true"]}, "resources": {"memory": "128m"}}),
        "error": producer.submit({"engine": {"image": "dockrq-test/absent:latest", "cmd": ["true"]}, "pull_policy": "never"}),
        "cancelled": producer.submit({"engine": {**image, "cmd": ["true"]}}, delay=timedelta(hours=1)),
    }
    producer.cancel(ids["cancelled"])
    # A lost one, written as the reaper writes it (worker.faults: ExecutionChannels.finish on the job).
    ids["lost"] = producer.submit({"engine": {**image, "cmd": ["true"]}}, delay=timedelta(hours=1))
    lost_job = Job.fetch(ids["lost"], connection=redis_client, serializer=JSONSerializer)
    ExecutionChannels(
        redis_client, Keys(spawn_worker.prefix), ids["lost"], worker="reaper-test", retention_seconds=3600,
        log_stream_maxlen=100, job=lost_job,
    ).finish(Outcome.failure(ids["lost"], ExecutionStatus.LOST, "worker_lost", "the worker died"))
    for status, eid in ids.items():
        assert producer.wait(eid, timeout=60).status.value == status

    # Queues page: one count per outcome status on the test's queue.
    browser.get(f"{dashboard}/")
    cells = wait_js(browser, pairs(f"tr[data-queue='{spawn_worker.queue}'] td.dockrq-count", "data-status"),
                    lambda v: len(v) == 7)
    assert dict(cells) == {s: "1" for s in ids}, cells

    # Jobs tab: lands on dockrq's queue (DOCKRQ_QUEUE), every ending told apart without opening a job.
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    badges = wait_js(browser, pairs("table#jobs span.dockrq-status", "data-status"), lambda v: len(v) == 7)
    assert f"/view/jobs/{spawn_worker.queue}/ended/" in browser.current_url
    labels = dict(badges)
    assert labels == {
        "succeeded": "succeeded · exit 0", "failed": "failed · exit 3", "timed_out": "timed_out",
        "rejected": "rejected · policy_violation", "error": "error · image_pull", "cancelled": "cancelled",
        "lost": "lost · worker_lost",
    }, labels
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-role=requeue-job-btn]")  # ended: never run again

    # One status's list (a pseudo-registry of the select).
    browser.get(f"{dashboard}/0/view/jobs/{spawn_worker.queue}/failed-outcome/8/dsc/1")
    rows = wait_js(browser, pairs("table#jobs tr[data-role=job]", "data-job-id"), lambda v: len(v) == 1)
    assert rows[0][0] == ids["failed"]
    # Its menu entry is selected; rq-dashboard's own "failed" entry is rq's failed registry, a different list.
    chosen, options = browser.execute_script(
        "var s = document.getElementById('select-registry');"
        " return [s.value, Array.from(s.options).map(function(o) { return [o.value, o.textContent]; })];")
    assert chosen == "failed-outcome" and ["failed", "failed (rq registry)"] in options, options

    # The failed execution's page.
    facts = pairs("#dockrq-facts td", "data-field")
    output = ("return [document.getElementById('dockrq-stdout').textContent,"
              " document.getElementById('dockrq-stderr').textContent,"
              " $('#requeue-job-btn').is(':visible'), document.documentElement.outerHTML];")
    browser.get(f"{dashboard}/0/view/job/{ids['failed']}")
    fact = dict(wait_js(browser, facts, lambda v: len(v) == 10))
    assert (fact["status"], fact["exit_code"], fact["image"]) == ("failed", "3", test_image)
    assert fact["worker"].startswith(spawn_worker.executor_id) and fact["node"] == spawn_worker.executor_id
    assert fact["queued"].endswith(("ms", " s")) and fact["run"].endswith(("ms", " s"))
    assert fact["pull"] == "none (image present)"
    stdout, stderr, requeue_shown, html = browser.execute_script(output)
    assert (stdout, stderr) == ("token=***\n", "bad\n")
    assert SECRET not in html and not requeue_shown

    # A running execution: its page offers Cancel; the container stops with a cancelled outcome.
    running = producer.submit({"engine": {**image, "cmd": ["sh", "-c", "echo started; sleep 60"]}})
    browser.get(f"{dashboard}/0/view/job/{running}")
    wait_js(browser, facts, lambda v: dict(v).get("status") == "running")
    wait_js(browser, output, lambda v: v[0] == "started\n")  # the live log's tail
    wait_for(browser, "#dockrq-cancel-btn", lambda els: els[0].is_displayed())[0].click()
    wait_for(browser, "#confirmation-modal-yes", lambda els: els[0].is_displayed())[0].click()
    assert producer.wait(running, timeout=60).status.value == "cancelled"
    wait_js(browser, facts, lambda v: dict(v).get("status") == "cancelled")

    # Delete on an ended execution: the rq job goes, its outcome stays (waiters still answer).
    browser.get(f"{dashboard}/0/view/jobs/{spawn_worker.queue}/succeeded/8/dsc/1")
    wait_for(browser, "[data-role=delete-job-btn]")[0].click()
    wait_for(browser, "#confirmation-modal-yes", lambda els: els[0].is_displayed())[0].click()
    deadline = time.monotonic() + 20
    while Job.exists(ids["succeeded"], connection=redis_client):
        assert time.monotonic() < deadline, "Delete did not remove the rq job"
        time.sleep(0.2)
    assert producer.wait(ids["succeeded"], timeout=5).status.value == "succeeded"

    # Delete on a scheduled execution cancels it first: it never runs and its waiters wake.
    later = producer.submit({"engine": {**image, "cmd": ["true"]}}, delay=timedelta(hours=1))
    assert post(f"{dashboard}/job/{later}/delete")["status"] == "OK"
    assert producer.wait(later, timeout=10).status.value == "cancelled"
    assert not Job.exists(later, connection=redis_client)
    # Requeue of an ended execution is refused: it runs at most once.
    answer = post(f"{dashboard}/job/{ids['lost']}/requeue")
    assert answer["status"] == "ERROR" and "runs at most once" in answer["message"]
    assert len(redis_client.lrange(Keys(spawn_worker.prefix).outcome(ids["lost"]), 0, -1)) == 1


def status_of(url: str, method: str = "GET") -> int:
    """The HTTP status of one request (4xx/5xx included)."""
    try:
        return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_deleted_or_unknown_job_page_answers_from_the_outcome_or_404(
    dashboard, browser, spawn_worker, producer, redis_client, test_image
):
    """Issue 14 trial: rq-dashboard answered 500 (NoSuchJobError) on the page of a job the
    dashboard's own Delete removed, and on any unknown id."""
    spawn_worker()
    request = {"engine": {"image": test_image, "cmd": ["sh", "-c", 'echo "token=$TOKEN"; echo bad >&2; exit 3'],
                          "env": {"TOKEN": SECRET}}}
    deleted_here, deleted_elsewhere = producer.submit(request), producer.submit(request)
    for eid in (deleted_here, deleted_elsewhere):
        assert producer.wait(eid, timeout=60).status.value == "failed"

    # An id with neither an rq job nor an outcome: 404 from the page and every JSON endpoint.
    unknown = "no-such-execution-42"
    assert status_of(f"{dashboard}/0/view/job/{unknown}") == 404
    assert status_of(f"{dashboard}/0/data/job/{unknown}.json") == 404
    for action in ("delete", "requeue", "cancel"):
        assert status_of(f"{dashboard}/job/{unknown}/{action}", "POST") == 404, action
    browser.get(f"{dashboard}/0/view/job/{unknown}")
    assert "No such job" in wait_for(browser, "#dockrq-not-found")[0].text

    # The dashboard's Delete: the rq job goes; its page still shows the execution, secret masked.
    assert post(f"{dashboard}/job/{deleted_here}/delete")["status"] == "OK"
    assert not Job.exists(deleted_here, connection=redis_client)
    assert status_of(f"{dashboard}/0/view/job/{deleted_here}") == 200
    assert status_of(f"{dashboard}/0/data/job/{deleted_here}.json") == 200
    assert post(f"{dashboard}/job/{deleted_here}/requeue")["status"] == "ERROR"  # runs at most once
    assert post(f"{dashboard}/job/{deleted_here}/delete")["status"] == "OK"  # nothing more to delete
    facts = pairs("#dockrq-facts td", "data-field")
    output = ("return [document.getElementById('dockrq-stdout').textContent,"
              " document.getElementById('dockrq-stderr').textContent, document.documentElement.outerHTML];")
    browser.get(f"{dashboard}/0/view/job/{deleted_here}")
    fact = dict(wait_js(browser, facts, lambda v: len(v) == 10))
    assert (fact["status"], fact["exit_code"], fact["image"]) == ("failed", "3", test_image)
    assert fact["worker"].startswith(spawn_worker.executor_id) and fact["node"] == spawn_worker.executor_id
    assert fact["run"].endswith(("ms", " s"))
    stdout, stderr, html = browser.execute_script(output)
    assert (stdout, stderr) == ("token=***\n", "bad\n")
    assert SECRET not in html and "rq job deleted" in html

    # Deleted some other way (rq's own Job.delete): the page from the outcome alone; the
    # output, whose secrets can no longer be told, is not shown.
    Job.fetch(deleted_elsewhere, connection=redis_client, serializer=JSONSerializer).delete()
    assert status_of(f"{dashboard}/0/data/job/{deleted_elsewhere}.json") == 200
    browser.get(f"{dashboard}/0/view/job/{deleted_elsewhere}")
    fact = dict(wait_js(browser, facts, lambda v: len(v) == 10))
    assert (fact["status"], fact["exit_code"]) == ("failed", "3")
    assert fact["run"].endswith(("ms", " s"))
    stdout, stderr, html = browser.execute_script(output)
    assert stdout.startswith("(not shown") and SECRET not in html
