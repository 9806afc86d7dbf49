"""Benchmarks record their rows in BENCHMARKS.md: inside the section's table, always."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# bench/ holds scripts, not an installed package: load its helpers from the file.
_spec = importlib.util.spec_from_file_location(
    "bench_common", Path(__file__).resolve().parents[2] / "bench" / "common.py"
)
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_a_row_joins_its_table_even_with_notes_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails on the old ``record``, which appended after the section's last line: below the
    notes written under a table, where Markdown no longer reads it as a row of it."""
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# Benchmarks\n\n## window\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "What the rows above show.\n\n## demo\n\n| c |\n|---|\n"
    )
    monkeypatch.setattr(common, "BENCHMARKS", path)
    common.record("window", "| a | b |\n|---|---|", "| 3 | 4 |")
    common.record("demo", "| c |\n|---|", "| 5 |")
    common.record("model", "| d |\n|---|", "| 6 |")
    assert path.read_text() == (
        "# Benchmarks\n\n## window\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n"
        "What the rows above show.\n\n## demo\n\n| c |\n|---|\n| 5 |\n\n"
        "## model\n\n| d |\n|---|\n| 6 |\n"
    )
