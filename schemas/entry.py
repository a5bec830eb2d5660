"""The console scripts' entry points (``dockrq``, ``dockrq-worker``; pyproject.toml).

Ctrl-C while Python is still importing a CLI (about a second on a loaded host) raised
KeyboardInterrupt outside every handler the CLIs have, and printed a traceback. Here
it ends the process quietly with exit 130, as it does once a command runs, and as
``docker`` does; nothing is imported before the guard but this module.
"""

from __future__ import annotations

import importlib
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's and docker's code for Ctrl-C


def _run(module: str) -> None:
    try:
        importlib.import_module(module).main()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def dockrq() -> None:
    """``dockrq``: ``producer.cli.main`` under the guard."""
    _run("producer.cli")


def dockrq_worker() -> None:
    """``dockrq-worker``: ``worker.service.cli.main`` under the guard."""
    _run("worker.service.cli")
