"""``dockrq-worker``: run rq workers for dockrq, clean up this node, check the setup.

``dockrq-worker`` alone (or ``dockrq-worker run``) runs a worker; settings come
from ``DOCKRQ_*`` environment variables, flags override them. Failures are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
import redis
from rq.serializers import JSONSerializer

from schemas import format_size
from schemas.connections import client_from_url, describe_redis_error
from worker.executor import CleanupError, DockerUnavailableError, ExecutorError

from worker.service import doctor
from worker.config.policy import DEFAULT_MAX_GPUS, PULL_POLICIES, WorkerPolicy
from worker.service.pool import DockrqWorkerPool, worker_name
from worker.service.usage import WorkerGroup
from worker.service.worker import DockrqWorker
from worker.service.runtime import WorkerRuntime, build_executor, install
from worker.config.settings import SETTING_ENV, SettingsError, WorkerSettings
from worker.observe import exporter, logformat
from worker.observe.exporter import MetricsError
from worker.observe.logformat import LOG_FORMATS

LOG_FORMAT = logformat.TEXT_FORMAT
DEFAULT_EXPORTER_PORT = 9310
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


_ANY_IMAGE = "'*'"
_SIZES = {
    "max_request_bytes", "max_memory", "max_output_bytes", "max_input_bytes", "max_output_files_bytes", "default_memory",
}


def _setting(field: str, *, default: str | None = None, comma_list: bool = False) -> str:
    """``env DOCKRQ_X[, comma list][; default Y]`` for a settings field, both read from
    ``worker.config.settings`` (the one place env names and defaults are spelled).
    ``default`` overrides the default's text ('' shows none)."""
    var = SETTING_ENV[field]
    if default is None:
        model = WorkerPolicy if field in WorkerPolicy.model_fields else WorkerSettings
        value = model.model_fields[field].default
        if value is None:
            default = "none"
        elif isinstance(value, bool):
            default = "yes" if value else "no"
        elif field in _SIZES:
            default = format_size(value)
        else:
            default = f"{value:g}" if isinstance(value, int | float) else str(value)
    return f"env {var}" + (", comma list" if comma_list else "") + (f"; default {default}" if default else "")


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every subcommand shares; None means 'not given' (the environment decides)."""
    for decorator in reversed(
        [
            click.option("--redis-url", help=f"Redis URL ({_setting('redis_url')})."),
            click.option("--prefix", help=f"Key prefix of the wire contract ({_setting('prefix')})."),
            click.option(
                "--executor-id", help=f"Label of this node's containers ({_setting('executor_id', default='hostname')})."
            ),
            click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Default INFO."),
            click.option(
                "--log-format", type=click.Choice(LOG_FORMATS),
                help=f"Log lines as text or JSON objects with the execution id ({_setting('log_format')}).",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


_METRICS_OPTIONS = [
    click.option(
        "--metrics-port", type=click.IntRange(1, 65535),
        help=f"Serve Prometheus metrics on this port, /metrics ({_setting('metrics_port', default='not served')}).",
    ),
    click.option("--metrics-addr", help=f"Address the metrics port listens on ({_setting('metrics_addr')})."),
    click.option(
        "--queue-metrics/--no-queue-metrics", default=None,
        help="Also report queue depth from Redis at each scrape; give it to one worker only, or run "
        f"`dockrq-worker metrics` ({_setting('queue_metrics')}).",
    ),
]


def _metrics_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``dockrq-worker metrics``'s port and address: its port has a default, DEFAULT_EXPORTER_PORT."""
    port = click.option(
        "--metrics-port", type=click.IntRange(1, 65535),
        help=f"Serve the metrics on this port, /metrics ({_setting('metrics_port', default=str(DEFAULT_EXPORTER_PORT))}).",
    )
    for decorator in reversed([port, _METRICS_OPTIONS[1]]):  # the exporter serves queue metrics anyway
        fn = decorator(fn)
    return fn


_METRICS_FIELDS = ("metrics_port", "metrics_addr", "queue_metrics", "log_format")


def _run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option(
                "-q", "--queue", "queues", multiple=True,
                help="Queue to work on; repeat for several, highest priority first "
                f"({_setting('queues', default='', comma_list=True)}).",
            ),
            click.option(
                "--name", help="rq worker name (default <executor id>.<pid>.<random>); with --pool, "
                "each member's is it plus -1, -2, ...",
            ),
            click.option("--burst", is_flag=True, default=None, help="Quit once the queues are empty."),
            click.option("--pool", type=click.IntRange(min=1), help="Run N workers with rq's WorkerPool."),
            click.option(
                "--stop-grace", "stop_grace_seconds", type=click.FloatRange(min=0),
                help="Seconds between SIGTERM and SIGKILL when a container is stopped "
                f"({_setting('stop_grace_seconds', default='')}).",
            ),
            click.option(
                "--max-request-bytes",
                help=f"Largest request taken; larger rq jobs end rejected unread ({_setting('max_request_bytes')}).",
            ),
            click.option(
                "--outcome-retry", "outcome_retry_seconds", type=click.FloatRange(min=0.5),
                help="Seconds an execution's writes wait for an unreachable Redis before the worker keeps "
                f"its outcome for later ({_setting('outcome_retry_seconds')}).",
            ),
            click.option(
                "--pull-timeout", "pull_timeout_seconds", type=click.FloatRange(min=1),
                help="Seconds an image pull may take before the execution ends error/image_pull "
                "(env DOCKRQ_PULL_TIMEOUT_SECONDS; default 300).",
            ),
            *_METRICS_OPTIONS,
            *_POLICY_OPTIONS,
        ]
    ):
        fn = decorator(fn)
    return fn


# What requests may ask for (worker.config.policy). Sizes take '1g'; 'none' lifts a limit.
_POLICY_OPTIONS = [
    click.option("--max-memory", help=f"Largest memory limit a request may ask for ({_setting('max_memory')})."),
    click.option("--max-cpus", help=f"Largest CPU limit in cores ({_setting('max_cpus')})."),
    click.option("--max-pids", help=f"Largest process limit ({_setting('max_pids')})."),
    click.option(
        "--max-timeout", "max_timeout_seconds",
        help=f"Longest timeout_seconds; also the limit of requests without one ({_setting('max_timeout_seconds')}).",
    ),
    click.option(
        "--max-output", "max_output_bytes",
        help=f"Largest output_limit_bytes per stream ({_setting('max_output_bytes')}).",
    ),
    click.option(
        "--max-gpus",
        help=f"Most GPUs a request may ask for ({_setting('max_gpus', default=f'{DEFAULT_MAX_GPUS}: no GPU access')}).",
    ),
    click.option(
        "--max-input", "max_input_bytes",
        help=f"Largest input files of one execution, in file bytes ({_setting('max_input_bytes')}).",
    ),
    click.option(
        "--max-output-files", "max_output_files_bytes",
        help=f"Cap of output_files_limit_bytes: output files kept per execution ({_setting('max_output_files_bytes')}).",
    ),
    click.option(
        "--allow-image", "allowed_images", multiple=True, metavar="PATTERN",
        help="Image glob allowed to run, e.g. 'registry.local/team/*'; repeatable "
        f"({_setting('allowed_images', default=_ANY_IMAGE, comma_list=True)}).",
    ),
    click.option(
        "--allow-pull", "allowed_pull_policies", multiple=True, type=click.Choice(PULL_POLICIES),
        help="Pull policy requests may use; repeatable, e.g. only 'never' "
        f"({_setting('allowed_pull_policies', default='all', comma_list=True)}).",
    ),
    click.option(
        "--allow-mount-root", "allowed_mount_roots", multiple=True, metavar="PATH",
        help=f"Host path below which bind mounts are allowed; repeatable ({_setting('allowed_mount_roots', default='none')}).",
    ),
    click.option(
        "--allow-bridge/--no-bridge", "allow_bridge", default=None,
        help=f"Whether requests may use the 'bridge' network ({_setting('allow_bridge')}).",
    ),
    click.option("--default-memory", help=f"Memory limit of requests that give none ({_setting('default_memory')})."),
    click.option("--default-pids", help=f"Process limit of requests that give none ({_setting('default_pids')})."),
    click.option(
        "--allow-cap", "allowed_caps", multiple=True, metavar="CAP",
        help="Capability requests may add (cap_add), e.g. NET_ADMIN, or ALL; repeatable "
        f"({_setting('allowed_caps', default='none', comma_list=True)}).",
    ),
    click.option(
        "--max-stop-timeout", "max_stop_timeout_seconds",
        help=f"Longest stop_timeout (docker run --stop-timeout) in seconds ({_setting('max_stop_timeout_seconds')}).",
    ),
]
_POLICY_FIELDS = (
    "max_memory", "max_cpus", "max_pids", "max_timeout_seconds", "max_output_bytes", "max_input_bytes",
    "max_output_files_bytes", "max_gpus", "allowed_images",
    "allowed_pull_policies", "allowed_mount_roots", "allow_bridge", "default_memory", "default_pids",
    "allowed_caps", "max_stop_timeout_seconds",
)


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SettingsError, DockerUnavailableError, ExecutorError, MetricsError) as exc:
            raise click.ClickException(str(exc)) from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis: {describe_redis_error(exc)}") from None

    return wrapper


def _options(ctx: click.Context, given: dict[str, Any]) -> dict[str, Any]:
    """The group's options overridden by the subcommand's (those actually given)."""
    merged = dict(ctx.obj or {})
    merged.update({k: v for k, v in given.items() if v is not None and v != ()})
    return merged


def _settings(opts: dict[str, Any]) -> WorkerSettings:
    fields = (
        "redis_url", "queues", "prefix", "executor_id", "stop_grace_seconds", "max_request_bytes",
        "outcome_retry_seconds", "pull_timeout_seconds", *_METRICS_FIELDS, *_POLICY_FIELDS,
    )
    return WorkerSettings.load(**{f: opts.get(f) for f in fields})


def _setup_logging(level: str | None, log_format: str = "text") -> str:
    level = (level or os.environ.get("DOCKRQ_LOG_LEVEL") or "INFO").upper()
    # One root handler: rq sees it and does not add its own, so all lines share a format.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logformat.formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])
    return level


@click.group(cls=WorkerGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_settings_options
@_run_options
@click.pass_context
def main(ctx: click.Context, **given: Any) -> None:
    """Run dockrq executions from Redis queues (the default command is `run`)."""
    ctx.obj = {k: v for k, v in given.items() if v is not None and v != ()}
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command()
@_settings_options
@_run_options
@click.pass_context
@_one_line_errors
def run(ctx: click.Context, **given: Any) -> None:
    """Run a worker (or --pool N workers) until SIGTERM.

    SIGTERM lets the current execution finish, then exits; a second SIGTERM
    cancels it, writes its outcome and exits.
    """
    opts = _options(ctx, given)
    settings = _settings(opts)
    level = _setup_logging(opts.get("log_level"), settings.log_format)
    connection = client_from_url(settings.redis_url)
    _require(doctor.check_redis(settings))
    _require(doctor.check_docker(settings))
    runtime = install(WorkerRuntime(settings))
    logging.getLogger(__name__).info("policy: %s", settings.policy.describe())
    pool = opts.get("pool") or 1
    exporter.serve_worker_metrics(settings, pool=pool)  # before the pool forks: one endpoint for all
    name = opts.get("name") or worker_name(settings.executor_id)
    if pool > 1:  # members named <name>-1, <name>-2, ... (worker.service.pool)
        # Each pool process makes its own executor (Docker client) after the fork.
        DockrqWorkerPool(
            list(settings.queues), connection=connection, num_workers=pool,
            worker_class=DockrqWorker, serializer=JSONSerializer, name=name,
        ).start(burst=bool(opts.get("burst")), logging_level=level)
        return
    worker = DockrqWorker(list(settings.queues), name=name, connection=connection)
    worker.work(burst=bool(opts.get("burst")), with_scheduler=True, logging_level=level)


@main.command(name="metrics")
@_settings_options
@_metrics_options
@click.option(
    "-q", "--queue", "queues", multiple=True,
    help="Queue to report; repeat for several (env DOCKRQ_QUEUES, comma list; default dockrq).",
)
@click.pass_context
@_one_line_errors
def metrics_command(ctx: click.Context, **given: Any) -> None:
    """Serve the queues' depth and recent outcomes for Prometheus until SIGTERM (one per deployment).

    Reads Redis at each scrape (dockrq_queue_jobs, dockrq_queue_outcomes,
    dockrq_redis_up); the port is --metrics-port / DOCKRQ_METRICS_PORT (default 9310).
    """
    opts = _options(ctx, given)
    if not os.environ.get("DOCKRQ_METRICS_PORT", "").strip():
        opts.setdefault("metrics_port", DEFAULT_EXPORTER_PORT)
    settings = _settings(opts)
    _setup_logging(opts.get("log_level"), settings.log_format)
    server = exporter.serve_queue_metrics(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.close()


@main.command()
@_settings_options
@click.pass_context
@_one_line_errors
def cleanup(ctx: click.Context, **given: Any) -> None:
    """Remove this node's dockrq containers, networks and volumes (label dockrq.executor=<executor id>).

    Running executions of this node are stopped too: use it when no worker runs here.
    """
    settings = _settings(_options(ctx, given))
    _setup_logging(_options(ctx, given).get("log_level") or "WARNING", settings.log_format)
    executor = build_executor(settings)
    try:
        report = executor.cleanup()
    except CleanupError as exc:
        _print_removed(exc.report)
        raise click.ClickException(str(exc)) from None
    finally:
        executor.close()
    _print_removed(report)


def _print_removed(report: Any) -> None:
    for kind in ("containers", "networks", "volumes"):
        names = getattr(report, kind)
        click.echo(f"removed {len(names)} {kind}" + (": " + " ".join(n[:12] for n in names) if names else ""))


@main.command(name="doctor")
@_settings_options
@click.option("--image", help="Also run `true` in this image through the executor.")
@click.pass_context
def doctor_command(ctx: click.Context, image: str | None, **given: Any) -> None:
    """Check that Redis and Docker are usable by a worker; exit 1 if not."""
    try:
        settings = _settings(_options(ctx, given))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    _setup_logging(_options(ctx, given).get("log_level") or "WARNING")
    checks = [doctor.check_redis(settings), doctor.check_docker(settings)]
    if image and checks[-1].ok:
        checks.append(doctor.check_container(settings, image))
    for check in checks:
        click.echo(check.line())
    if not all(c.ok for c in checks):
        sys.exit(1)


def _require(check: doctor.Check) -> None:
    if not check.ok:
        raise click.ClickException(f"{check.name}: {check.detail}")


if __name__ == "__main__":  # pragma: no cover
    main()
