"""Ctrl-C while a console script is still importing its CLI ends with exit 130 and nothing on
stderr (schemas/entry.py), as once a command runs; before, it printed a KeyboardInterrupt
traceback (a new user's trial: 6 of 13 early Ctrl-Cs of ``dockrq submit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The interrupt lands while the CLI module is imported: deterministic, unlike a timed signal.
INTERRUPT_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = [{script!r}, "--help"]
from schemas.entry import {entry}
{entry}()
"""


@pytest.mark.parametrize(
    ("script", "entry", "module"),
    [("dockrq", "dockrq", "producer.cli"), ("dockrq-worker", "dockrq_worker", "worker.service.cli")],
)
def test_ctrl_c_while_the_cli_imports_exits_130_quietly(script, entry, module):
    code = textwrap.dedent(INTERRUPT_IMPORT.format(module=module, script=script, entry=entry))
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (got.returncode, got.stderr) == (130, "")


def test_the_console_scripts_run_through_the_guard():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"dockrq": "schemas.entry:dockrq", "dockrq-worker": "schemas.entry:dockrq_worker"}
    got = subprocess.run([sys.executable, "-c", "from schemas.entry import dockrq; dockrq()", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and "Usage:" in got.stdout
