"""The submit-time checks agree with the real daemon: what ``engine.image`` and the size bounds
refuse is what dockerd refuses, and what they accept dockerd takes (no container is started)."""

from __future__ import annotations

import pytest
from docker.errors import APIError
from pydantic import ValidationError

from schemas import ExecutionRequest
from schemas.container import INT64_MAX

LABEL = "dockrq-test.request-bounds"


def _daemon_refuses_reference(docker_client, image: str) -> bool:
    """Whether dockerd refuses ``image`` as a reference (400 invalid reference format), as
    opposed to not having it (404): a create that finds it is removed at once."""
    try:
        created = docker_client.api.create_container(image, ["true"], labels={LABEL: "1"})
    except APIError as exc:
        if "invalid reference format" in str(exc):
            return True
        assert exc.status_code == 404, exc  # a valid name the daemon does not have
        return False
    docker_client.api.remove_container(created["Id"], force=True)
    return False


@pytest.mark.parametrize(
    "image",
    ["dockrq-test/busybox:latest", "dockrq-test/BusyBox:latest", "Dockrq-test/busybox", "BUSYBOX", "a___b",
     "dockrq-test/absent-x:1", "localhost:5000/team/absent:v1", "dockrq-test/busybox:", "a--b/c__d.e:T_1"],
)
def test_engine_image_refuses_what_the_daemon_refuses(docker_client, image):
    try:
        ExecutionRequest.model_validate({"engine": {"image": image}})
        refused = False
    except ValidationError as exc:
        assert "engine.image" in str(exc)
        refused = True
    assert refused == _daemon_refuses_reference(docker_client, image), image


def test_shm_size_bound_is_the_daemons(docker_client, test_image):
    assert ExecutionRequest.model_validate({"engine": {"image": test_image}, "resources": {"shm_size": INT64_MAX}})
    created = docker_client.api.create_container(
        test_image, ["true"], labels={LABEL: "1"}, host_config=docker_client.api.create_host_config(shm_size=INT64_MAX)
    )
    docker_client.api.remove_container(created["Id"], force=True)
    with pytest.raises(APIError, match="int64"):
        docker_client.api.create_container(
            test_image, ["true"], labels={LABEL: "1"},
            host_config=docker_client.api.create_host_config(shm_size=INT64_MAX + 1),
        )
    with pytest.raises(ValidationError, match="resources.shm_size"):
        ExecutionRequest.model_validate({"engine": {"image": test_image}, "resources": {"shm_size": INT64_MAX + 1}})
