"""``worker.jobs.execute``: the rq job function's name on the wire (``schemas.JOB_FUNCTION``).

Jobs already on a queue name this path, so it stays; the job function lives in
``worker.execution.run``.
"""

from worker.execution.run import execute

__all__ = ["execute"]
