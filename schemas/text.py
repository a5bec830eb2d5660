"""Text that can be stored: every string of a request must be valid UTF-8.

Redis keys and values, rq's JSON job data and the Docker API all carry text as
UTF-8. Python strings can hold what UTF-8 cannot encode: lone surrogates, which
is how Python hands over command-line arguments and environment values that
were not valid UTF-8 (``surrogateescape``: byte 0xE9 becomes U+DCE9), and what
``json.loads`` makes of an escaped ``"\\udce9"``. Such a string would fail deep
inside redis-py with a ``UnicodeEncodeError``; it is refused at validation
instead, naming the field and the offending byte.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is imported by check_storable: the CLI's messages use the rest without it
    from pydantic import BaseModel

# The pydantic error type of an unstorable string; its ``ctx["at"]`` is the field's path,
# which describe_validation_error reports as the error's location.
NOT_UTF8 = "text_not_utf8"


def utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8, or None if it can.

    A surrogate in U+DC80..U+DCFF is an undecodable byte smuggled in by
    ``surrogateescape``; it is reported as that byte.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            what = f"byte 0x{code - 0xDC00:02x}"
        else:
            what = f"lone surrogate U+{code:04X}"
        return f"not valid UTF-8 ({what} at character {exc.start}); only UTF-8 text can be stored"
    return None


def _walk(
    value: Any, path: tuple[str | int, ...], model_class: type[BaseModel]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        problem = utf8_problem(value)
        if problem:
            yield path, problem
    elif isinstance(value, model_class):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), (*path, name), model_class)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := utf8_problem(key)):
                yield (*path, key), problem  # the path shows the name, escaped
            yield from _walk(item, (*path, key), model_class)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index), model_class)


def check_storable(model: BaseModel) -> None:
    """Raise a validation error naming the first string field of ``model`` (at any depth:
    lists, dict keys and values, nested models) that is not valid UTF-8."""
    from pydantic import BaseModel
    from pydantic_core import PydanticCustomError

    for path, problem in _walk(model, (), BaseModel):
        # a dict key may be the unstorable string itself: shown escaped (\udce9), never raw
        at = ".".join(str(p) if utf8_problem(str(p)) is None else repr(p)[1:-1] for p in path) or "request"
        raise PydanticCustomError(NOT_UTF8, "{problem}", {"at": at, "problem": problem})


def storable_name(value: str, what: str) -> str:
    """``value`` unchanged if it can be stored, else ValueError naming ``what`` (a queue, a prefix)."""
    problem = utf8_problem(value)
    if problem:
        raise ValueError(f"{what}: {problem}")
    return value


def escaped_text(value: str) -> str:
    """``value`` made storable by escaping what is not UTF-8 (byte 0xFF becomes ``\\xff``).

    For text dockrq reports but did not receive from a producer, such as the names a
    container gave its output files: refusing it is not an option (the execution has
    already run), and storing it raw would fail the outcome's write.
    """
    if utf8_problem(value) is None:
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def escaped_name(value: str) -> str:
    """A name the container made, made storable without ambiguity (``OutputFile.escaped``):
    each byte that is not UTF-8 becomes ``\\xNN`` and each backslash ``\\\\``; the rest as is.
    ``unescaped_name`` reverses it."""
    out = []
    for char in value:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:  # a lone surrogate that is no escaped byte: not storable either
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def unescaped_name(value: str) -> str:
    """The name ``escaped_name`` made ``value`` from (bytes that are not UTF-8 as surrogateescape)."""
    return re.sub(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})", _unescape_one, value)


def _unescape_one(match: re.Match[str]) -> str:
    code = match.group(1)
    if code == "\\":
        return "\\"
    if code[0] == "x":
        return chr(0xDC00 + int(code[1:], 16))
    return chr(int(code[1:], 16))


def quoted_name(name: str) -> str:
    """A container path (or symlink target) from an archive, quoted for one line of output so
    that every name reads back as exactly one byte string.

    Always in single quotes, as Python writes a bytes literal: a backslash is ``\\\\``, a quote
    ``\\'``, a byte that is not UTF-8 (``surrogateescape``: U+DCE9) ``\\xe9``, control characters
    ``\\n``, ``\\t``, ``\\r`` or ``\\xNN``, other unprintable characters ``\\uNNNN``; printable text,
    non-ASCII included, as it is. So ``'caf\\xe9'`` (byte 0xE9) and ``'caf\\\\xe9'`` (a
    backslash, then ``xe9``) differ, as ``ls --quoting-style=shell-escape`` keeps them apart.
    """
    out = []
    for char in name:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char == "'":
            out.append("\\'")
        elif char in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not char.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


_CONTROL_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """A local path for one line of output: as it is when it reads back as exactly itself
    (printable UTF-8 text without quotes, backslashes or control characters), else quoted as
    ``quoted_name`` quotes archive names (``'app\\xe9'`` for a name whose last byte is 0xE9)."""
    text = os.fsdecode(path)
    quoted = quoted_name(text)
    return text if quoted == f"'{text}'" else quoted
