"""The console scripts' entry points (``dockrq``, ``dockrq-worker``; pyproject.toml): a
top-level module, so that its SIGINT mask is the first thing a dockrq process runs.

Ctrl-C while Python was still importing a CLI (about a second on a loaded host) raised
KeyboardInterrupt wherever the import stood: a traceback, or an exit 1 when a library
wrapped it (pydantic-core's ``SchemaError`` while building a deferred model), or
nothing at all when importlib swallowed it in a lock's callback and the command ran
on. So the import runs with SIGINT blocked (``pthread_sigmask``): a Ctrl-C meanwhile
stays pending and is delivered, as KeyboardInterrupt, the moment it is unblocked,
before the command starts. One that lands later in a callback, where Python would
only print it and go on, is raised again (``sys.unraisablehook``). Whatever a Ctrl-C
raises, or a library makes of it, ends the process quietly with exit 130, as
``docker`` does and as the CLIs themselves do once a command handles it.
"""

from __future__ import annotations

import _signal  # the C module under ``signal``, which imports enum first: nothing to interrupt here
import sys

_signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})  # as early as this module can (see _run)

import importlib  # noqa: E402 - after the mask

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's and docker's code for Ctrl-C

_interrupted = False


def _on_sigint(signum: int, frame: object) -> None:
    """Python's own SIGINT handler (``signal.default_int_handler``), remembering that it ran."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _unraisable(unraisable: object) -> None:
    """``sys.unraisablehook``: a Ctrl-C that landed in a callback (importlib's module-lock
    callback, a weakref's) is not lost there ("Exception ignored in ..." and the command ran
    on): SIGINT is raised again, to be handled where the command can. Everything else is
    printed as Python prints it."""
    if isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
        import _thread
        import os

        # From another thread: raised here, it would run the handler at once, inside the hook.
        _thread.start_new_thread(os.kill, (os.getpid(), _signal.SIGINT))
        return
    sys.__unraisablehook__(unraisable)  # type: ignore[arg-type]


def _run(module: str) -> None:
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        main = importlib.import_module(module).main
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # not ignored (nohup, a background job)
            _signal.signal(_signal.SIGINT, _on_sigint)
            sys.unraisablehook = _unraisable
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})  # a pending Ctrl-C is raised here
        main()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception:
        if _interrupted:  # a library wrapped the KeyboardInterrupt (pydantic-core's SchemaError)
            sys.exit(EXIT_INTERRUPTED)
        raise


def dockrq() -> None:
    """``dockrq``: ``producer.cli.main`` with Ctrl-C handled from the first import."""
    _run("producer.cli")


def dockrq_worker() -> None:
    """``dockrq-worker``: ``worker.service.cli.main`` with Ctrl-C handled from the first import."""
    _run("worker.service.cli")
