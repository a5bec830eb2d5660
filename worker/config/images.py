"""Image references as the daemon resolves them, and the operator's image patterns.

``busybox``, ``busybox:latest``, ``library/busybox`` and
``docker.io/library/busybox:latest`` are one image to Docker; a policy that
compared the strings as written would let a pattern miss the image it names
(``docker.io/library/*`` against ``busybox``) or let an image slip past one
(``busybox*`` against ``busybox.evil.example/x``, which Docker pulls from the
host ``busybox.evil.example``). So both sides are qualified first, the way the
daemon does it: registry (``docker.io`` when none), ``library/`` for Docker
Hub's one-component names, ``latest`` when neither tag nor digest is given.

docker-py splits references the daemon's way (``parse_repository_tag``: a
registry's ``:port`` is not a tag; ``resolve_repository_name``: a first
component with ``.`` or ``:``, or ``localhost``, is a registry, and
``index.docker.io`` is ``docker.io``); what it leaves out is added here.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

from docker.auth import INDEX_NAME, resolve_repository_name
from docker.errors import InvalidRepository
from docker.utils import parse_repository_tag

_WILDCARDS = frozenset("*?[")


class ImageReference(NamedTuple):
    """One image reference, registry-qualified: ``docker.io``, ``library/busybox``, ``1.36``, None."""

    registry: str
    path: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, image: str) -> ImageReference:
        """Raises InvalidRepository for a reference no daemon would accept (a URL scheme, ...)."""
        repository, tag, digest = _split(image)
        registry, path = _registry_and_path(repository)
        return cls(registry, _official(registry, path), tag, digest)

    def __str__(self) -> str:
        return f"{self.registry}/{self._full_path()}"

    def path_forms(self) -> tuple[str, ...]:
        """What a pattern's path is compared with: the path in full, ``path@digest``
        when pinned, and the bare path.

        In full is ``path:tag`` (``latest`` when untagged) or ``path[:tag]@digest``:
        a tag next to a digest does not stand alone, since the digest decides what
        runs (``busybox:1.36@sha256:...`` is not ``busybox:1.36``), and so the digest
        alone stands for it: ``busybox@sha256:...``, whatever tag is written with it.
        """
        if self.digest:
            return self._full_path(), f"{self.path}@{self.digest}", self.path
        return self._full_path(), self.path

    def _full_path(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        if self.digest:
            return f"{self.path}{tag}@{self.digest}"
        return f"{self.path}{tag or ':latest'}"


class ImagePattern(NamedTuple):
    """An operator's glob, qualified like a reference; ``registry`` None: matched across registries."""

    registry: str | None
    path: str

    @classmethod
    def parse(cls, pattern: str) -> ImagePattern:
        """``busybox`` -> docker.io ``library/busybox`` (every tag); ``team/*`` -> docker.io ``team/*``;
        ``registry.local:5000/team/*`` -> that registry's ``team/*``; ``*`` and ``*/team/*`` (a ``*``
        where a Docker Hub name would start) span registries. ``?`` and ``[...]`` stand for one
        character of a name and are qualified like one: ``[bc]usybox`` is docker.io
        ``library/[bc]usybox`` (read across registries it would have to match a registry's first
        character too, and so would allow nothing the operator meant). Raises ValueError for an
        invalid one."""
        repository, tag, digest = _split(pattern)
        first, slash, _ = repository.partition("/")
        if not (slash and _is_registry(first)) and pattern.startswith("*"):
            return cls(None, pattern)
        try:
            registry, path = _registry_and_path(repository)
        except InvalidRepository as exc:
            raise ValueError(f"image pattern {pattern!r}: {exc}") from None
        # 'docker.io/*' is all of Docker Hub; only a literal one-component name is an official image
        if not (slash and _WILDCARDS.intersection(path)):
            path = _official(registry, path)
        return cls(registry, path + (f":{tag}" if tag else "") + (f"@{digest}" if digest else ""))

    def matches(self, image: ImageReference) -> bool:
        if self.registry is None:
            return any(fnmatch.fnmatchcase(f"{image.registry}/{form}", self.path) for form in image.path_forms())
        # the registry is matched on its own: '*.example.com' cannot reach into the path
        return fnmatch.fnmatchcase(image.registry, self.registry) and any(
            fnmatch.fnmatchcase(form, self.path) for form in image.path_forms()
        )


def image_allowed(image: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``image`` matches one of the fnmatch ``patterns``, both qualified as the daemon reads them.

    A pattern without a tag allows every tag (``busybox``), one with a tag only
    that tag (``busybox:1.36``; an untagged image is ``latest``); ``*`` crosses ``/``.
    A reference Docker would refuse is allowed by nothing.
    """
    try:
        reference = ImageReference.parse(image)
    except InvalidRepository:
        return False
    return any(ImagePattern.parse(p).matches(reference) for p in patterns)


def _split(reference: str) -> tuple[str, str | None, str | None]:
    # repository, tag, digest as written; parse_repository_tag splits off a digest first, and a
    # tag may stand before it (name:tag@digest)
    repository, tag = parse_repository_tag(reference)
    if "@" not in reference:
        return repository, tag, None
    digest = tag
    repository, tag = parse_repository_tag(repository)
    return repository, tag, digest


def _is_registry(first: str) -> bool:
    # the daemon's rule for the component before the first '/'. Daemons built on
    # distribution/reference >= 0.5 also take an upper-case one for a host (paths are lower
    # case); docker-py does not, and older daemons refuse the name: a host is the safe reading.
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def _registry_and_path(repository: str) -> tuple[str, str]:
    first, slash, rest = repository.partition("/")
    if slash and first != first.lower():
        return first, rest
    return resolve_repository_name(repository)  # index.docker.io -> docker.io; refuses 'http://...'


def _official(registry: str, path: str) -> str:
    return f"library/{path}" if registry == INDEX_NAME and "/" not in path else path
