"""schemas.connections.CommandRetry: Redis away is retried; a wrong password or an untrusted
certificate (redis-py raises both as ConnectionError) is raised at the first answer."""

from __future__ import annotations

import ssl

import pytest
import redis

from schemas.connections import command_retry, refused_not_away


def _calls_until_raised(error: Exception) -> int:
    retry = command_retry()
    retry._backoff.compute = lambda failures: 0.0  # no pauses in a unit test
    calls = 0

    def do() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        retry.call_with_retry(do, lambda exc: None)
    return calls


def _verify_failed() -> redis.ConnectionError:
    """As redis-py raises it: a ConnectionError raised while handling the ssl error."""
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer certificate")
        except OSError as exc:
            raise redis.ConnectionError(f"Error 1 connecting to 127.0.0.1:6380. {exc}.") from None
    except redis.ConnectionError as exc:
        return exc


def test_redis_away_is_retried():
    assert _calls_until_raised(redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")) == 11
    assert _calls_until_raised(redis.TimeoutError("Timeout reading from socket")) == 11


def test_a_wrong_password_or_an_untrusted_certificate_is_not():
    assert _calls_until_raised(redis.AuthenticationError("invalid username-password pair or user is disabled.")) == 1
    assert refused_not_away(_verify_failed())
    assert _calls_until_raised(_verify_failed()) == 1
    assert not refused_not_away(redis.ConnectionError("Connection reset by peer"))
