"""Whether an exception was caused by one of some types, anywhere down its chain.

Libraries wrap what went wrong: redis-py raises a ``ConnectionError`` whose cause is
``ssl.SSLCertVerificationError``; docker-py's errors wrap requests' wrapping of the
socket's. Telling an outage from a refusal means looking down ``__cause__`` (``raise
... from``) and ``__context__`` (raised while handling) to the first error raised.
"""

from __future__ import annotations


def caused_by(exc: BaseException | None, *types: type[BaseException]) -> bool:
    """True when ``exc`` or any exception in its cause/context chain is one of ``types``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, types):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
