"""README.md's Markdown tables render as tables (issue 14 trial: a sentence inside the
Redis wire-contract table cut it in two; the rows after it rendered as paragraph text)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_CODE = re.compile(r"`[^`]*`")


def _cells(line: str) -> int:
    return len(_CODE.sub("code", line).strip().strip("|").split("|"))


def _tables(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(first line number, rows) of each run of lines starting with ``|``, outside code blocks."""
    tables: list[tuple[int, list[str]]] = []
    fenced = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("|"):
            continue
        if tables and tables[-1][0] + len(tables[-1][1]) == number:
            tables[-1][1].append(line)
        else:
            tables.append((number, [line]))
    return tables


def test_every_table_is_one_block_with_a_header_and_equal_rows() -> None:
    lines = README.read_text().splitlines()
    tables = _tables(lines)
    assert tables
    for first, rows in tables:
        assert first == 1 or not lines[first - 2].strip(), f"README.md:{first}: a table row right after text"
        assert len(rows) >= 2 and re.fullmatch(r"\|( *:?-+:? *\|)+", rows[1].strip()), f"README.md:{first}: no header"
        width = _cells(rows[0])
        for offset, row in enumerate(rows):
            assert _cells(row) == width, f"README.md:{first + offset}: {_cells(row)} cells, the header has {width}"


def test_the_wire_contract_table_lists_every_key_row() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("## Redis wire contract")
    table = next(rows for first, rows in _tables(lines) if first > start)
    keys = [row.split("|")[1].strip() for row in table[2:]]
    assert any(k.startswith("rq job meta") for k in keys) and any(k.startswith("`rq:rl:KEY`") for k in keys), keys
