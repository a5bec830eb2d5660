"""Whether Redis still knows an execution: the commands that ask, for every reader.

A waiter, a ``wait_many`` and a log follower end an execution Redis no longer knows
(restarted without persistence, a failover that lost it, expired keys) instead of
waiting forever. It is known while its outcome, its rq job or its producer's claim
exists. An rq job counts only as a hash with ``created_at`` (every ``Job.save`` writes
it): a worker still running an execution Redis lost recreates the hash with single
fields (its state in ``meta``, rq's ``last_heartbeat`` until rq deletes the key again,
an adopter's ``worker_name``), and that must not keep a reader waiting.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job

from schemas import Keys

from .errors import ExecutionVanished

#: The field only a saved rq job hash has.
JOB_FIELD = "created_at"


def presence_commands(keys: Keys, execution_id: str) -> list[tuple[str, tuple[Any, ...]]]:
    """``(command, args)`` for one pipeline: replies (outcome exists, rq job exists, claim exists)."""
    return [
        ("exists", (keys.outcome(execution_id),)),
        ("hexists", (Job.key_for(execution_id), JOB_FIELD)),
        ("exists", (keys.claim(execution_id),)),
    ]


def follow_is_over(execution_id: str, outcome: bool, job: bool, claim: bool) -> bool:
    """Whether a log follower is done, from :func:`presence_commands`' replies: the outcome
    exists, or the rq job went (its outcome kept elsewhere or not). Raises ExecutionVanished
    when Redis knows nothing of it any more: a follow cut short must say so, not end as if
    the log were whole."""
    if not (outcome or job or claim):
        raise ExecutionVanished(execution_id)
    return bool(outcome) or not job
