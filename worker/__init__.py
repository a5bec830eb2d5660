"""dockrq's worker side, grouped by duty (README, Layout):

- ``worker.executor``: the Docker executor (knows Docker, nothing of Redis or rq);
- ``worker.service``: the worker process (rq worker/job classes, runtime, CLI, doctor, dashboard);
- ``worker.execution``: one execution's run and the Redis channels it writes;
- ``worker.faults``: liveness, the reaper's sweeps, adoption, settling, outages;
- ``worker.config``: settings, operator policy, image references;
- ``worker.observe``: what operators see (Prometheus metrics, JSON log lines, dashboard pages).

``worker.jobs``, ``worker.rq_worker``, ``worker.rq_job`` and ``worker.dashboard`` are the
paths outside tools name (the rq job function on the wire, ``rq worker -w/--job-class``,
``rq-dashboard --config``); each is a thin alias of its module in a group.
"""
