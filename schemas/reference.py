"""Docker's image reference grammar, checked at submit (``engine.image``).

The daemon parses every image reference with the grammar of the distribution
project's ``reference`` package (``reference/regexp.go``, ``normalize.go``)::

    reference       := name [ ":" tag ] [ "@" digest ]
    name            := [domain '/'] remote-name          (at most 255 characters)
    domain          := host [ ":" port-number ]
    host            := domain-name | IPv4address | "[" IPv6address "]"
    domain-name     := domain-component [ "." domain-component ]*
    domain-component:= /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    remote-name     := path-component [ "/" path-component ]*
    path-component  := alpha-numeric [ separator alpha-numeric ]*
    alpha-numeric   := /[a-z0-9]+/
    separator       := /[_.]|__|[-]*/
    tag             := /[\\w][\\w.-]{0,127}/
    digest          := algorithm ":" hex (at least 32 hex digits)

A first component is a domain only when it has a ``.`` or a ``:`` or is
``localhost`` (``splitDockerDomain``); otherwise the whole name is a Docker Hub
path, which must be lower case. A reference the daemon would refuse ("invalid
reference format: repository name must be lowercase") is refused here, before
anything is queued, with the daemon's words.
"""

from __future__ import annotations

import re

NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REMOTE_NAME = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)


def check_image_reference(image: str) -> str:
    """``image`` if Docker's reference grammar (module doc) accepts it; else ValueError in the
    daemon's words (``invalid reference format: repository name must be lowercase``)."""
    name, at, digest = image.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid reference format: {digest[:80]!r} is not a digest (ALGORITHM:HEX)")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:  # a ':' after the last '/' starts the tag (before it, a registry's port)
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"invalid reference format: {tag[:80]!r} is not a tag ([A-Za-z0-9_.-], at most 128)")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise ValueError(f"invalid reference format: repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.fullmatch(first):
            raise ValueError(f"invalid reference format: {first[:80]!r} is not a registry host[:port]")
        path = rest
    else:
        path = name
    if not _REMOTE_NAME.fullmatch(path):
        if _REMOTE_NAME.fullmatch(path.lower()):
            raise ValueError("invalid reference format: repository name must be lowercase")
        raise ValueError(
            f"invalid reference format: {path[:80]!r} is not a repository name (lower-case letters, digits, "
            "'.', '_', '-' between them, '/' between components)"
        )
    return image
