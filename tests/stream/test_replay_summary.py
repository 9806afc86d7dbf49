"""The replay summary accounts for every row, and a far-future row cannot stall a replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main as trail

DAY = 86_400


def _write(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    path.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t:.0f}\n" for u, i, t in rows)
    )
    return path


def test_summary_reports_the_events_of_the_partial_last_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: the events of the dropped partial last window were not reported anywhere."""
    rows = [(f"u{n % 7}", f"i{n % 5}", 1_600_000_000 + n * 3600.0) for n in range(24 * 10)]
    # Day 10 is incomplete: its 5 events are left out and must be counted.
    rows += [(f"u{n}", "i1", 1_600_000_000 + 10 * DAY + n * 60.0) for n in range(5)]
    last_day_start = (1_600_000_000 + 10 * DAY) // DAY * DAY
    partial = sum(1 for _, _, t in rows if t >= last_day_start)
    path = _write(tmp_path / "log.csv", rows)
    code = trail(
        [
            "replay",
            str(path),
            "--window",
            "1d",
            "--scorer",
            "ewma-1",
            "--print-top",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert f"{partial:,} in the partial last window left out" in err
    assert f"{len(rows) - partial:,} events" in err


def test_a_single_far_future_row_does_not_stall_the_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Defect: a gap of years closed every empty window one by one (an endless replay and a
    predictions file of hundreds of MB); now the empty windows of a gap are skipped."""
    rows = [(f"u{n % 7}", f"i{n % 5}", 1_600_000_000 + n * 3600.0) for n in range(24 * 10)]
    rows += [
        ("u1", "i1", 1_600_000_000 + 400 * 365 * DAY),
        ("u2", "i2", 1_600_000_000 + 400 * 365 * DAY + 2 * DAY),
    ]
    path = _write(tmp_path / "gap.csv", rows)
    predictions = tmp_path / "p.jsonl"
    code = trail(
        [
            "replay",
            str(path),
            "--window",
            "1d",
            "--scorer",
            "ewma-1",
            "--time-horizon",
            "off",
            "--print-top",
            "0",
            "--no-progress",
            "--predictions-out",
            str(predictions),
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "empty windows skipped" in err
    assert len(predictions.read_text().splitlines()) < 30
