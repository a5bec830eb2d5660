"""schemas.connections.commands_within: under a budget (DOCKRQ_OUTCOME_RETRY_SECONDS for an
execution's end), a command's own retry round (redis-py's Retry on its connection,
CommandRetry) ends with what is left of the budget instead of running its ~4 s round once
per write. On a fake clock: redis-py's sleeps advance it."""

from __future__ import annotations

import socket

import pytest
import redis

import schemas.connections as connections
from schemas.connections import (
    WRITE_BACKOFF,
    OutageBudget,
    client_from_url,
    command_retry,
    commands_within,
    within_budget,
)


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic of schemas.connections and redis-py's Retry sleep, on one fake clock."""
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(connections.time, "monotonic", lambda: now[0])
    monkeypatch.setattr("redis.retry.sleep", sleep)
    return now


def _away(calls: list[float], clock: list[float]):
    def do() -> None:
        calls.append(clock[0])
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    return do


def test_a_command_round_ends_with_the_budget(clock):
    calls: list[float] = []
    budget = OutageBudget(0.5)
    with commands_within(budget), pytest.raises(redis.ConnectionError):
        command_retry().call_with_retry(_away(calls, clock), lambda exc: None)
    assert budget.down_since == calls[0]  # the clock started at the first failed try
    assert calls[-1] - calls[0] == pytest.approx(0.5)  # the last try when the budget ends, none after
    assert budget.spent


def test_without_a_budget_the_round_is_redis_pys(clock):
    calls: list[float] = []
    with pytest.raises(redis.ConnectionError):
        command_retry().call_with_retry(_away(calls, clock), lambda exc: None)
    assert len(calls) == 11  # redis-py's 10 retries (about 4 s in all)
    assert calls[-1] - calls[0] > 0.5


def test_a_spent_budget_gets_one_try_per_command(clock):
    budget = OutageBudget(0.5)
    budget.failed()
    clock[0] += 1.0
    calls: list[float] = []
    with commands_within(budget), pytest.raises(redis.ConnectionError):
        command_retry().call_with_retry(_away(calls, clock), lambda exc: None)
    assert len(calls) == 1


def test_the_budget_in_force_is_restored():
    outer, inner = OutageBudget(5), OutageBudget(1)
    with commands_within(outer):
        with commands_within(inner):
            assert connections._COMMAND_BUDGET.get() is inner
        assert connections._COMMAND_BUDGET.get() is outer
    assert connections._COMMAND_BUDGET.get() is None


def test_a_refused_password_is_still_not_retried(clock):
    calls = []

    def do() -> None:
        calls.append(1)
        raise redis.AuthenticationError("invalid username-password pair")

    with commands_within(OutageBudget(5)), pytest.raises(redis.AuthenticationError):
        command_retry().call_with_retry(do, lambda exc: None)
    assert calls == [1]


def test_writes_sharing_a_budget_give_up_with_it_on_a_real_client(clock):
    """Three writes in a row on one budget, Redis away (a refused port): all of them together
    wait the budget, not a command round (about 4 s) each as before."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    client = client_from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    budget = OutageBudget(2.0)
    start = clock[0]
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            within_budget(lambda: client.set("k", "v"), budget, backoff=WRITE_BACKOFF)
    assert budget.spent
    # Slept at most the budget (the fake clock only moves by redis-py's pauses); before, the
    # first write alone slept through redis-py's whole round (10 pauses, about 4 s).
    assert clock[0] - start <= 2.0 + 1e-6
    client.close()
