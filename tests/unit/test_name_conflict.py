"""DockerClient.create on Docker's 409 name conflict (worker.executor.client): the execution's
container exists, or another worker is creating it right now -- the daemon has reserved the name
but cannot show the container yet (inspect answers 404 for a moment). The create waits for it to
show instead of ending the execution ``error`` (container_create). A stub docker-py APIClient."""

from __future__ import annotations

import pytest
import requests
from docker.errors import APIError, NotFound

from worker.executor import client as client_module
from worker.executor.client import DockerClient
from worker.executor.errors import ContainerCreateError
from worker.executor.spec import LABEL_EXECUTION, LABEL_EXECUTOR, ContainerSpec

SPEC = ContainerSpec(name="dockrq-node-e1-abcd", image="img", labels={LABEL_EXECUTOR: "node", LABEL_EXECUTION: "e1"})


def _error(cls, status: int):
    response = requests.Response()
    response.status_code = status
    return cls(f"{status}", response=response)


class StubAPI:
    """create answers from ``creates`` (an exception to raise, or an id); inspect from ``inspects``."""

    base_url = "http://stub"

    def __init__(self, creates: list, inspects: list) -> None:
        self.creates, self.inspects = creates, inspects
        self.calls: list[str] = []

    def create_host_config(self, **kw):
        return {}

    def create_container(self, image, name, host_config, **kw):
        self.calls.append("create")
        answer = self.creates.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {"Id": answer}

    def inspect_container(self, name):
        self.calls.append("inspect")
        answer = self.inspects.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(client_module, "NAME_CONFLICT_POLL_SECONDS", 0.0)
    monkeypatch.setattr(client_module, "NAME_CONFLICT_WAIT_SECONDS", 0.5)


def _client(api: StubAPI) -> DockerClient:
    return DockerClient(api)  # type: ignore[arg-type]


def test_a_container_being_created_is_waited_for_and_returned_as_existing():
    theirs = {"Id": "c1", "Config": {"Labels": dict(SPEC.labels)}}
    conflict = _error(APIError, 409)
    api = StubAPI([conflict, conflict, conflict], [_error(NotFound, 404), _error(NotFound, 404), theirs])
    assert _client(api).create(SPEC) == ("c1", False)
    assert api.calls == ["create", "inspect", "create", "inspect", "create", "inspect"]


def test_a_name_freed_meanwhile_is_created_here():
    api = StubAPI([_error(APIError, 409), "mine"], [_error(NotFound, 404)])
    assert _client(api).create(SPEC) == ("mine", True)


def test_another_executions_container_under_the_name_is_refused():
    other = {"Id": "c2", "Config": {"Labels": {LABEL_EXECUTOR: "node", LABEL_EXECUTION: "e2"}}}
    api = StubAPI([_error(APIError, 409)], [other])
    with pytest.raises(ContainerCreateError, match="another execution"):
        _client(api).create(SPEC)


def test_a_name_that_stays_taken_by_nothing_visible_ends_in_a_create_error():
    api = StubAPI([_error(APIError, 409)] * 10_000, [_error(NotFound, 404)] * 10_000)
    with pytest.raises(ContainerCreateError, match="does not show"):
        _client(api).create(SPEC)
