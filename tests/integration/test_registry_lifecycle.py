"""The loopback registries never outlive who started them: the suite's session fixtures stop
theirs when the session ends, ``Registry.stop`` ends its process, and a registry whose starter
is killed before its cleanup ran gets SIGTERM from the kernel (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import registry as reg

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INNER = "DOCKRQ_REGISTRY_INNER_SESSION"  # set only for the pytest session run by the test below


def _registry_pids(under: Path) -> list[int]:
    """docker-registry processes (zombies aside) whose config lies under ``under``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and Path(cmdline[0].decode(errors="replace")).name == reg.REGISTRY_BIN and any(
            str(under) in arg.decode(errors="replace") for arg in cmdline[1:]
        ):
            pids.append(int(proc.name))
    return pids


def _gone(host: str, port: int, under: Path, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while reg.answers(host, port, timeout=0.5) or _registry_pids(under):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not os.environ.get(INNER), reason="the inner session of test_a_session_stops_its_registries")
def test_inner_session_uses_both_registries(registry, auth_registry):
    for address in (registry, auth_registry):
        host, _, port = address.rpartition(":")
        assert reg.answers(host, int(port))
    Path(os.environ[INNER]).write_text(f"{registry} {auth_registry}\n")


def test_a_session_stops_its_registries(tmp_path):
    basetemp, out = tmp_path / "inner", tmp_path / "addresses"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
         f"{Path(__file__)}::test_inner_session_uses_both_registries"],
        cwd=ROOT, env={**os.environ, INNER: str(out)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    addresses = out.read_text().split()
    assert len(addresses) == 2 and addresses[0] != addresses[1]
    for address in addresses:
        host, _, port = address.rpartition(":")
        assert _gone(host, int(port), basetemp), f"the session's registry on {address} is still running"


def test_stop_ends_the_registry_process(tmp_path):
    registry = reg.Registry(tmp_path / "r")
    registry.start()
    try:
        pid = registry.pid
        assert pid is not None and reg.answers(registry.host, registry.port)
        registry.start()  # a second start while it runs changes nothing
        assert registry.pid == pid
    finally:
        registry.stop()
    assert registry.pid is None
    assert _gone(registry.host, registry.port, tmp_path)
    registry.stop()  # stopping a stopped one is fine


def test_a_registry_ends_with_the_process_that_started_it(tmp_path):
    starter = (
        "import sys, time\n"
        "from scripts import registry as reg\n"
        "r = reg.Registry(sys.argv[1]); r.start()\n"
        "print(r.port, flush=True); time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path / "r")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        assert _registry_pids(tmp_path), "the starter's registry is not running"
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs in the starter
        proc.wait(10)
        proc.stdout.close()
    assert _gone("127.0.0.1", port, tmp_path), "the registry outlived the process that started it"
