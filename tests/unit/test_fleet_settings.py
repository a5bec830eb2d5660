"""Many-host settings without a server: Sentinel URLs, deployment ids, replica acknowledgements."""

from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool

from schemas.connections import (
    BLOCKING_SOCKET_TIMEOUT,
    REDIS_DOWN,
    blocking_twin,
    client_from_url,
    clients_from_url,
    redact_url,
)
from schemas.replication import ReplicaAcks, ReplicationTimeout
from schemas.redis_url import parse_sentinel_url, redis_location
from worker.config.deployment import default_deployment
from worker.config.settings import SettingsError, WorkerSettings


def test_sentinel_url_parts():
    u = parse_sentinel_url("redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:5000/mymaster/3?socket_timeout=0.5")
    assert u.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 5000))
    assert (u.service, u.db, u.username, u.password) == ("mymaster", 3, "app", "s@cret")
    assert u.options == {"socket_timeout": 0.5}
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/svc?sentinel_password=x").sentinel_password == "x"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:1", "service name is missing"),
        ("redis+sentinel://h:1/svc/x", "/SERVICE_NAME/DB"),
        ("redis+sentinel://h:1,/svc", "empty Sentinel host"),
        ("redis+sentinel://h:99999/svc", "bad Sentinel address"),
        ("redis+sentinel://h:1/svc?ssl=true", "unknown option 'ssl'"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)
    with pytest.raises(SettingsError, match="DOCKRQ_REDIS_URL"):
        WorkerSettings.load({}, redis_url=url)


def test_sentinel_client_asks_the_sentinels_for_the_master():
    client = client_from_url("redis+sentinel://u:pw@127.0.0.1:1,127.0.0.1:2/svc/2", socket_timeout=30)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
    assert pool.connection_class.__name__ == "ClosingSentinelConnection"  # closes on a read cut short
    assert [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels] == [1, 2]
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"], pool.connection_kwargs["socket_timeout"]) == (2, "pw", 30)
    assert client_from_url("redis://h:1/0").connection_pool.connection_kwargs["host"] == "h"


def test_sentinel_clients_come_from_the_one_factory_with_its_retry():
    url = "redis+sentinel://u:pw@127.0.0.1:1/svc/2"
    client, blocking = clients_from_url(url)
    for c in (client, blocking, blocking_twin(client)):
        pool = c.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc"
        assert pool.connection_class.__name__ == "ClosingSentinelConnection"
        retry = pool.connection_kwargs["retry"]  # schemas.connections.command_retry: redis-py Retry on REDIS_DOWN
        assert retry.get_retries() > 0 and set(REDIS_DOWN) <= set(retry._supported_errors)
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "pw")
    assert blocking.connection_pool.connection_kwargs["socket_timeout"] == BLOCKING_SOCKET_TIMEOUT
    twin = blocking_twin(client).connection_pool
    assert twin.connection_kwargs["socket_timeout"] == BLOCKING_SOCKET_TIMEOUT
    assert twin.sentinel_manager is client.connection_pool.sentinel_manager  # follows the same Sentinels


def test_sentinel_urls_are_shown_without_password():
    assert redact_url("redis+sentinel://u:pw@a:1,b:2/svc/0") == "redis+sentinel://u:***@a:1,b:2/svc/0"
    assert redact_url("redis+sentinel://a:1,b:2/svc/0") == "redis+sentinel://a:1,b:2/svc/0"


def test_deployment_id_is_stable_and_ignores_credentials_and_sentinel_order():
    a = default_deployment("dockrq", "redis://u:pw@10.0.0.5:6379/0")
    assert a == default_deployment("dockrq", "redis://10.0.0.5:6379/0") == default_deployment("dockrq", "redis://10.0.0.5/0")
    assert a.startswith("dockrq-") and a != default_deployment("other", "redis://10.0.0.5:6379/0")
    assert a != default_deployment("dockrq", "redis://10.0.0.5:6379/1")
    assert redis_location("redis+sentinel://a:1,b:2/svc/1") == redis_location("redis+sentinel://b:2/svc/1")
    s = WorkerSettings.load({"DOCKRQ_DEPLOYMENT": "prod-eu"})
    assert s.deployment_id == "prod-eu"
    assert WorkerSettings.load({}).deployment_id == default_deployment("dockrq", "redis://127.0.0.1:6379/0")
    with pytest.raises(SettingsError, match="DOCKRQ_DEPLOYMENT"):
        WorkerSettings.load({"DOCKRQ_DEPLOYMENT": "no spaces"})


class FakeMaster:
    """ROLE and WAIT as a Redis master with ``replicas`` replicas that ack ``acks`` of them."""

    def __init__(self, replicas: int, acks: int) -> None:
        self.replicas, self.acks, self.waits = replicas, acks, []

    def execute_command(self, *args):
        assert args[0] == "ROLE"
        return [b"master", 10, [[b"127.0.0.1", b"1", b"10"]] * self.replicas]

    def pipeline(self, transaction=True):
        master = self

        class Pipe:
            def __enter__(self):
                self.cmds = []
                return self

            def __exit__(self, *exc):
                return False

            def set(self, *args, **kw):
                self.cmds.append("SET")

            def execute_command(self, name, wanted, timeout_ms):
                master.waits.append(wanted)

            def execute(self):
                return [True, min(master.acks, master.waits[-1])]

        return Pipe()


def test_replica_acks_wait_for_the_connected_replicas_only():
    assert ReplicaAcks(0, marker_key="m").confirm(FakeMaster(1, 1), "x") is None  # off: no command at all
    master = FakeMaster(replicas=2, acks=2)
    assert ReplicaAcks(1, marker_key="m").confirm(master, "x") == 1 and master.waits == [1]
    lone = FakeMaster(replicas=0, acks=0)  # after a failover: no replica left, writes go on unconfirmed
    assert ReplicaAcks(1, marker_key="m").confirm(lone, "x") == 0 and lone.waits == []
    slow = FakeMaster(replicas=1, acks=0)
    with pytest.raises(ReplicationTimeout, match="only 0 of 1 replica"):
        ReplicaAcks(1, 0.01, marker_key="m").confirm(slow, "execution e1")


def test_a_stale_replica_count_is_looked_up_again():
    acks = ReplicaAcks(1, marker_key="m")
    acks.confirm(FakeMaster(replicas=1, acks=1), "x")  # caches one replica
    promoted = FakeMaster(replicas=0, acks=0)  # the new master has none
    assert acks.confirm(promoted, "y") == 0
