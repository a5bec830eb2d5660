"""dockrq-worker's command line as the issue 14 trial found it: usage errors exit 125 in
one line as dockrq's do (producer.usage), the metrics command's help gives its real port
default, and --pool members are named as single workers are."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from producer.usage import EXIT_USAGE
from worker.observe.exporter import MetricsError
from worker.service import cli, doctor
from worker.service.pool import DockrqWorkerPool, worker_name


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--bogus"], "--bogus"),
        (["run", "--bogus"], "--bogus"),
        (["nosuch"], "nosuch"),
        (["run", "--pool", "0"], "--pool"),
        (["run", "--allow-pull", "sometimes"], "--allow-pull"),
        (["metrics", "--metrics-port", "70000"], "--metrics-port"),
        (["cleanup", "extra"], "extra"),
        (["doctor", "--image"], "--image"),
    ],
)
def test_usage_errors_are_one_line_and_exit_125(args, named):
    result = CliRunner().invoke(cli.main, args, prog_name="dockrq-worker")
    assert result.exit_code == EXIT_USAGE == 125, result.output + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockrq-worker: ") and named in lines[0], lines
    assert re.search(r"See 'dockrq-worker( \w+)? --help'\.$", lines[0]) and result.stdout == ""


def test_metrics_help_gives_the_port_it_serves_on(monkeypatch):
    monkeypatch.delenv("DOCKRQ_METRICS_PORT", raising=False)
    served: list[int | None] = []

    def serve(settings):
        served.append(settings.metrics_port)
        raise MetricsError("stop here")

    monkeypatch.setattr(cli.exporter, "serve_queue_metrics", serve)
    result = CliRunner().invoke(cli.main, ["metrics"])
    assert result.exit_code == 1 and served == [cli.DEFAULT_EXPORTER_PORT] == [9310]
    text = " ".join(CliRunner().invoke(cli.main, ["metrics", "--help"]).output.split())
    assert "(env DOCKRQ_METRICS_PORT; default 9310)" in text and "not served" not in text
    # A worker serves none unless asked: its help says so.
    run_help = " ".join(CliRunner().invoke(cli.main, ["run", "--help"]).output.split())
    assert "(env DOCKRQ_METRICS_PORT; default not served)" in run_help


def test_pool_members_are_named_like_single_workers():
    name = worker_name("node-7")
    assert re.fullmatch(r"node-7\.\d+\.[0-9a-f]{6}", name)
    assert worker_name("node-7") != name  # the random part: restarts never reuse a name
    pool = DockrqWorkerPool(["q"], num_workers=2, name=name, connection=__import__("fakeredis").FakeRedis())
    assert [pool.member_name() for _ in range(3)] == [f"{name}-1", f"{name}-2", f"{name}-3"]


def test_pool_accepts_name_as_its_members_base(monkeypatch):
    monkeypatch.setattr(doctor, "check_redis", lambda s: doctor.Check("redis", True, "fake"))
    monkeypatch.setattr(doctor, "check_docker", lambda s: doctor.Check("docker", True, "fake"))
    monkeypatch.setattr(cli, "install", lambda runtime: runtime)
    monkeypatch.setattr(cli.exporter, "serve_worker_metrics", lambda settings, pool: None)
    started: list[tuple[str, int]] = []
    monkeypatch.setattr(DockrqWorkerPool, "start", lambda self, **kw: started.append((self.name, self.num_workers)))
    result = CliRunner().invoke(cli.main, ["run", "--pool", "2", "--name", "w"])
    assert result.exit_code == 0, result.output
    assert started == [("w", 2)]
