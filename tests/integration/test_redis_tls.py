"""Redis over TLS with an ACL user: workers, producer, CLI and dashboard all work.

A throwaway CA and server certificate (openssl) and a redis-server that listens
on TLS only, with a password for the default user and an ACL user limited to
rq's and dockrq's keys and channels. URLs carry the CA file as query parameters,
which redis-py's ``from_url`` (and so rq, the producer, the CLIs and
rq-dashboard) pass to its SSL connection:

    rediss://dockrq:PASSWORD@127.0.0.1:PORT/0?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, Worker

from producer import Producer
from schemas import ExecutionStatus

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
USER, PASSWORD, ADMIN_PASSWORD = "dockrq", "tls-user-pw-8c2f", "tls-admin-pw-51d0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class TlsRedis:
    def __init__(self, directory: Path, port: int, process: subprocess.Popen) -> None:
        self.dir, self.port, self.process = directory, port, process
        self.ca = directory / "ca.pem"

    def url(self, user: str = USER, password: str = PASSWORD, *, ca: bool = True, db: int = 0) -> str:
        auth = f"{quote(user)}:{quote(password)}@" if user else f":{quote(password)}@"
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca}" if ca else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/{db}{query}"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url(), **kwargs)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.fail("openssl and redis-server are needed (scripts/setup.sh installs them)")
    # a long path on purpose: real URLs with a user, a password and file paths are long
    d = tmp_path_factory.mktemp("tls-certificates-of-a-throwaway-test-ca-kept-only-for-this-test-module")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=dockrq throwaway test CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "san.cnf", cwd=d)
    port = _free_port()
    log = open(d / "redis.log", "wb")
    process = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
            "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(d),
            "--requirepass", ADMIN_PASSWORD,
            # least privilege for dockrq: rq's keys and channels, and those of the test prefixes (p-*);
            # tls_worker adds the literal pattern of the control channels
            "--user", USER, "on", f">{PASSWORD}", "~rq:*", "~p-*", "&rq:*", "&p-*", "+@all",
        ],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    server = TlsRedis(d, port, process)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.client(socket_timeout=2).ping()
            break
        except redis.RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("TLS redis-server did not start:\n" + (d / "redis.log").read_text())
            time.sleep(0.1)
    yield server
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    log.close()


@pytest.fixture
def tls_worker(tls_redis, spawn_worker):
    """A dockrq-worker on the TLS URL (the later --redis-url wins over spawn_worker's own)."""
    # The worker listens for cancels with one PSUBSCRIBE; Redis ACLs allow a pattern
    # subscription only when the pattern itself is listed, literally.
    admin = redis.Redis.from_url(tls_redis.url(user="", password=ADMIN_PASSWORD))
    admin.execute_command("ACL", "SETUSER", USER, f"&{spawn_worker.prefix}:exec:*:control")
    admin.close()
    proc = spawn_worker("--redis-url", tls_redis.url(), ready=False)
    client = tls_redis.client()
    queue = Queue(spawn_worker.queue, connection=client)
    deadline = time.monotonic() + 30
    while not Worker.all(queue=queue):
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dockrq-worker did not start on TLS:\n{proc.output()}")
        time.sleep(0.1)
    yield proc
    client.close()


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _run_at_once(*commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """:func:`_run` of each of ``commands``, all at the same time; the results in their order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: _run(*command, timeout=timeout), commands))


def test_worker_producer_cli_and_dashboard_over_tls_with_an_acl_user(
    tls_redis, tls_worker, spawn_worker, test_image, unique, dashboard_json
):
    url = tls_redis.url()
    assert len(url) > 160
    # the server really is TLS-only and password-protected (said at the first try: redis-py's default
    # retries of this plain client would only get the same reset connection)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()

    # the producer (Python API)
    with Producer(url, queue=spawn_worker.queue, prefix=spawn_worker.prefix) as producer:
        eid = producer.submit({"execution_id": f"tls-py-{unique}",
                               "engine": {"image": test_image, "cmd": ["sh", "-c", "echo over tls; echo err >&2"]}})
        outcome = producer.wait(eid, timeout=60)
        assert (outcome.status, outcome.result.stdout) == (ExecutionStatus.SUCCEEDED, "over tls\n")
        logged = sorted((e.stream, e.data) for e in producer.logs(eid, follow=True))  # two streams: no order between them
        assert logged == [("stderr", "err\n"), ("stdout", "over tls\n")]
        # a cancel reaches the worker on its control channel
        long = producer.submit({"execution_id": f"tls-cancel-{unique}", "engine": {"image": test_image, "cmd": ["sleep", "300"]}})
        deadline = time.monotonic() + 30
        while producer.status(long).state.value != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        producer.cancel(long)
        assert producer.wait(long, timeout=60).status == ExecutionStatus.CANCELLED
    assert f"execution tls-cancel-{unique}: cancel requested on the control channel" in tls_worker.output()

    # the dockrq CLI, attached: live logs, outcome, exit code
    cli = [str(BIN / "dockrq"), "--redis-url", url, "--prefix", spawn_worker.prefix, "--queue", spawn_worker.queue]
    attached = _run(*cli, "submit", "--id", f"tls-cli-{unique}", test_image, "sh", "-c", "echo from cli; exit 3")
    assert (attached.returncode, attached.stdout) == (3, "from cli\n"), attached.stderr
    # status, ls and the worker's own checks (doctor): three processes at the same time
    status, listed, doctor = _run_at_once(
        [*cli, "--json", "status", f"tls-cli-{unique}"],
        [*cli, "ls"],
        [str(BIN / "dockrq-worker"), "doctor", "--redis-url", url, "--prefix", spawn_worker.prefix],
    )
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "failed"
    assert f"tls-cli-{unique}" in listed.stdout and f"tls-py-{unique}" in listed.stdout

    # the worker's own checks
    assert doctor.stdout.startswith(f"ok    redis     rediss://127.0.0.1:{tls_redis.port}/0: Redis "), doctor.stdout
    assert PASSWORD not in doctor.stdout + doctor.stderr

    # rq-dashboard, configured with the same URL
    dash = dashboard_json(url)
    assert spawn_worker.queue in [q["name"] for q in dash("/data/queues.json")["queues"]]
    finished = dash(f"/data/jobs/{spawn_worker.queue}/finished/10/asc/1.json")["jobs"]
    assert {j["id"] for j in finished} == {f"tls-py-{unique}", f"tls-cancel-{unique}", f"tls-cli-{unique}"}
    job = dash(f"/data/job/tls-cli-{unique}.json")
    assert json.loads(job["metadata"])["status"] == "failed"
    assert [w["name"] for w in dash("/data/workers.json")["workers"] if w["queues"] == [spawn_worker.queue]]
    assert PASSWORD not in tls_worker.output() and "Traceback" not in tls_worker.output()


def test_wrong_credentials_or_certificate_are_one_clear_line(tls_redis, spawn_worker):
    wrong_password = tls_redis.url(password="not-the-password")
    no_ca = tls_redis.url(ca=False)
    # a user whose ACL lacks the control channels' pattern (its worker is checked last)
    admin = redis.Redis.from_url(tls_redis.url(user="", password=ADMIN_PASSWORD))
    admin.execute_command("ACL", "SETUSER", "nocancel", "on", ">nocancel-pw", "~rq:*", "~p-*", "&rq:*", "&p-*", "+@all")
    admin.close()
    nocancel_url = tls_redis.url(user="nocancel", password="nocancel-pw")
    cases = ((wrong_password, "invalid username-password pair"), (no_ca, "certificate verify failed"))
    # each case's CLI and worker, and the nocancel user's worker: the five processes at the same time
    runs = iter(_run_at_once(*(
        command for url, _ in cases for command in (
            [str(BIN / "dockrq"), "--redis-url", url, "status", "some-id"],
            [str(BIN / "dockrq-worker"), "--redis-url", url, "--executor-id", spawn_worker.executor_id, "--burst"],
        )
    ), [str(BIN / "dockrq-worker"), "--redis-url", nocancel_url, "--prefix", spawn_worker.prefix, "--burst"], timeout=60))
    for url, says in cases:
        out = next(runs)
        assert out.returncode == 69, out  # dockrq status: cannot reach Redis (said at once, not ridden out)
        assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"dockrq: cannot reach Redis at rediss://{USER}:***@127.0.0.1:{tls_redis.port}/0")
        assert says in out.stderr and "not-the-password" not in out.stderr and "Traceback" not in out.stderr

        worker = next(runs)
        assert worker.returncode == 1 and worker.stderr.count("\n") == 1, worker.stderr
        assert worker.stderr.startswith(f"Error: redis: rediss://127.0.0.1:{tls_redis.port}/0: ")
        assert says in worker.stderr and "not-the-password" not in worker.stderr

    # the ACL user may not touch keys outside rq's and dockrq's
    with pytest.raises(redis.exceptions.NoPermissionError):
        tls_redis.client().set("elsewhere", 1)

    # the user whose ACL lacks the control channels' pattern: the worker says so instead of missing cancels
    worker = next(runs)
    pattern = f"{spawn_worker.prefix}:exec:*:control"
    assert worker.returncode == 1 and worker.stderr.count("\n") == 1, worker.stderr
    assert f"the Redis user may not PSUBSCRIBE {pattern}" in worker.stderr and f"add '&{pattern}' to its ACL" in worker.stderr
