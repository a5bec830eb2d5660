"""The worker process: the rq worker and job classes, the per-process runtime, the
``dockrq-worker`` CLI, its pre-flight checks and the rq-dashboard configuration."""
