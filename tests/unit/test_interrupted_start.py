"""Ctrl-C while a console script is still importing its CLI ends with exit 130 and nothing on
stderr (dockrq_entry.py), as once a command runs; before, it printed a KeyboardInterrupt
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
from dockrq_entry import {entry}
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
    assert scripts == {"dockrq": "dockrq_entry:dockrq", "dockrq-worker": "dockrq_entry:dockrq_worker"}
    got = subprocess.run([sys.executable, "-c", "from dockrq_entry import dockrq; dockrq()", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and "Usage:" in got.stdout


FAKE_CLIS = {
    # Ctrl-C in the middle of the import: held until the import is done, then raised before main runs.
    "interrupted_import": "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nimport json\n"
                          "def main():\n    print('ran')\n",
    # A library turns the KeyboardInterrupt into its own error (pydantic-core's SchemaError does).
    "wrapped_interrupt": "import os, signal\ndef main():\n    try:\n        os.kill(os.getpid(), signal.SIGINT)\n"
                         "        import time; time.sleep(5)\n    except KeyboardInterrupt as exc:\n"
                         "        raise RuntimeError('Error building validator: KeyboardInterrupt') from None\n",
    # A Ctrl-C landing in a callback (importlib's module-lock one, a weakref's), where Python
    # prints "Exception ignored" and goes on: a third trial's submit then ran to its end.
    "interrupt_in_callback": "import os, signal, time, weakref\nclass O: pass\n"
                             "def cb(_):\n    os.kill(os.getpid(), signal.SIGINT)\n    for _ in range(1000): pass\n"
                             "def main():\n    o = O()\n    r = weakref.ref(o, cb)\n    del o\n"
                             "    time.sleep(1)\n    print('ran')\n",
    # Without a Ctrl-C, an error is not hidden.
    "plain_error": "def main():\n    raise RuntimeError('a real bug')\n",
}


@pytest.mark.parametrize("module", sorted(FAKE_CLIS))
def test_whatever_a_ctrl_c_raises_the_command_exits_130_quietly(module, tmp_path):
    (tmp_path / f"{module}.py").write_text(FAKE_CLIS[module])
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from dockrq_entry import _run; _run({module!r})"
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if module == "plain_error":
        assert got.returncode == 1 and "RuntimeError: a real bug" in got.stderr
    else:
        assert (got.returncode, got.stdout, got.stderr) == (130, "", "")
