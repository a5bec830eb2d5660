"""Every test module's basename is unique across tests/unit and tests/integration: pytest
imports them by basename (rootdir-relative, no packages), and two of a name stop the whole
suite at collection ("import file mismatch"), which running only one directory never shows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_unit_and_integration():
    names = Counter(path.name for path in TESTS.glob("*/test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
