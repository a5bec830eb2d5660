"""Start-up: what a ``dockrq`` command loads (README, "Start-up"). Each case runs in a fresh
interpreter and lists the heavy libraries it imported; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("redis", "rq", "rich", "docker", "tarfile")

_PROBE = """
import json, sys
from producer.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.__stderr__)
"""


def _run(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKRQ_")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=60, env=env,
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["status", "bad id!"], ["ls", "--bogus"]])
def test_help_and_usage_errors_load_no_client_library(args):
    seen = _run(*args)
    assert seen["code"] in (0, 125)
    assert seen["loaded"] == []


def test_status_of_an_unreachable_execution_loads_no_rendering_or_docker():
    # Redis unreachable on purpose (port 1): the command fails before anything is shown.
    seen = _run("--redis-url", "redis://127.0.0.1:1/0", "--redis-retry", "0.1", "status", "nosuch")
    assert seen["code"] == 69  # EXIT_REDIS_UNREACHABLE
    assert "rich" not in seen["loaded"] and "docker" not in seen["loaded"]
    assert "redis" in seen["loaded"]


def test_a_refused_submit_loads_no_rendering():
    seen = _run("--redis-url", "redis://127.0.0.1:1/0", "submit", "--memory", "5zz", "busybox", "true")
    assert seen["code"] == 125
    assert "rich" not in seen["loaded"] and "docker" not in seen["loaded"]


def test_the_worker_entry_point_loads_no_rendering():
    code = "import sys, worker.service.cli; print(sorted(m for m in ('rich', 'producer.client') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def _deferred_models() -> list[type]:
    import importlib
    import pkgutil

    import schemas
    from pydantic import BaseModel

    from producer.status import ExecutionStatusView

    found = {ExecutionStatusView}
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        found |= {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseModel) and v is not BaseModel}
    return sorted((m for m in found if m.model_config.get("defer_build")), key=lambda m: m.__qualname__)


def test_every_deferred_model_builds():
    """defer_build moves a schema error from import to first use: build each one here instead."""
    models = _deferred_models()
    assert {m.__name__ for m in models} >= {"ExecutionRequest", "Outcome", "LogBatch", "ExecutionStatusView"}
    for model in models:
        model.model_rebuild()
        assert model.__pydantic_complete__, model


def test_deferred_models_built_by_many_threads_at_once_validate_alike():
    """A deferred model's first use may come from several threads (a worker's, a Producer shared by
    threads): pydantic serialises the build (its rebuild lock, pyproject's pydantic floor)."""
    code = """
import threading
from schemas import ExecutionRequest, Outcome
barrier, results = threading.Barrier(8), []
def use():
    barrier.wait()
    request = ExecutionRequest.model_validate({"engine": {"image": "busybox", "cmd": ["true"]}, "execution_id": "x1"})
    outcome = Outcome.model_validate_json('{"execution_id": "x1", "status": "succeeded", "exit_code": 0}')
    results.append((request.model_dump_json(), outcome.model_dump_json()))
threads = [threading.Thread(target=use) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert len(results) == 8 and len(set(results)) == 1, results
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
