"""The worker's CPU per execution, A/B between source trees, interleaved (issue 14).

``worker_cpu_ms_per_execution`` as ``scripts/bench_cost.py`` measures it (a
``dockrq-worker`` on a private ``redis-server``, N sequential executions of
``sh -c 'seq 1 10'``, the worker process's user + system CPU ÷ N), but for one
or more source trees in turn, round after round (A B A B ...), so that load from
other processes on a shared machine falls on every tree alike; the median of
the rounds counts. Each worker runs ``python -m worker.service.cli`` with the
tree first on ``PYTHONPATH`` (this checkout's virtualenv for the packages).

    .venv/bin/python scripts/bench_cpu.py --tree before=/tmp/old-checkout --tree after=. \
        --rounds 5 --executions 100

To see where the CPU goes, attach ``py-spy record --gil --pid PID`` to a worker
(BENCHMARKS.md, "Worker CPU per execution: where it goes").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
from bench_cost import measure_cost  # noqa: E402


class TreeBench(bench.Bench):
    """The bench, with its workers run from another source tree."""

    def __init__(self, args: argparse.Namespace, console: Console, tree: Path) -> None:
        super().__init__(args, console)
        self.tree = tree

    def _spawn(self, queue: str, name: str, *, redis_url: str | None = None,
               retention: int = bench.RETENTION) -> subprocess.Popen[bytes]:
        pythonpath = os.pathsep.join(x for x in (str(self.tree), os.environ.get("PYTHONPATH", "")) if x)
        env = {**os.environ, "PYTHONPATH": pythonpath, "DOCKRQ_RETENTION_SECONDS": str(retention),
               "DOCKRQ_MAX_OUTPUT_BYTES": "1g", "DOCKRQ_MAX_INPUT_BYTES": "1g", "DOCKRQ_MAX_OUTPUT_FILES_BYTES": "1g"}
        cmd = [sys.executable, "-m", "worker.service.cli",
               "--redis-url", redis_url or self.args.redis_url, "-q", queue, "--prefix", self.prefix,
               "--executor-id", self.executor_id, "--stop-grace", "1", "--log-level", "WARNING",
               "--name", f"{self.executor_id}-{name}"]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=str(self.tree))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", required=True, metavar="NAME=DIR", help="a source tree to measure")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--executions", type=int, default=100)
    p.add_argument("--json", metavar="FILE")
    opts = p.parse_args(argv)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in opts.tree]
    args = bench.parse_args(["--quick", "--cost-executions", str(opts.executions), "--idle-seconds", "0.5"])
    console = Console(stderr=True)
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(opts.rounds):
        for name, tree in trees:
            b = TreeBench(args, console, tree)
            load = os.getloadavg()[0]
            try:
                cost = measure_cost(b, opts.executions, 0.5, lambda: None)
            finally:
                b.cleanup()
            row = {k: cost[k] for k in ("worker_cpu_ms_per_execution", "raw_cpu_ms_per_execution",
                                         "producer_cpu_ms_per_execution", "redis_commands_per_execution")}
            row["load"] = round(load, 2)
            figures[name].append(row)
            console.print(f"round {r + 1} {name}: {row}")
    summary = {
        name: {
            "worker_cpu_ms_median": statistics.median(x["worker_cpu_ms_per_execution"] for x in rows),
            "raw_cpu_ms_median": statistics.median(x["raw_cpu_ms_per_execution"] for x in rows),
            "load_median": statistics.median(x["load"] for x in rows),
            "rounds": rows,
        }
        for name, rows in figures.items()
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if opts.json:
        Path(opts.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
