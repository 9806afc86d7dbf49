"""Fixtures of the protocol tests: small real slices of amazon-beauty."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
from brute_force_protocol import DAY, Row

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BEAUTY = SHARED / "amazon-beauty-5core" / "interactions.csv.gz"


def _last_days(rows: list[Row], days: int, folder: Path) -> tuple[Path, list[Row]]:
    """The rows of the last ``days`` days of ``rows``, and a CSV file of them in ``folder``."""
    start = max(ts for _, _, ts in rows) - days * DAY
    kept = [r for r in rows if r[2] >= start]
    path = folder / "slice.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(kept)
    return path, kept


@pytest.fixture(scope="session")
def beauty_slice(
    tmp_path_factory: pytest.TempPathFactory, skip_or_fail: Callable[[str], NoReturn]
) -> tuple[Path, list[Row]]:
    """The last 14 months of amazon-beauty: a small real log (under CI it must be there), as a
    CSV file and as its ``(user_id, item_id, timestamp)`` rows. Read-only: tests share it."""
    if not BEAUTY.exists():
        skip_or_fail(f"{BEAUTY} is not there")
    with gzip.open(BEAUTY, "rt") as source:
        rows = [(r["user_id"], r["item_id"], int(r["timestamp"])) for r in csv.DictReader(source)]
    return _last_days(rows, 420, tmp_path_factory.mktemp("beauty"))


@pytest.fixture(scope="session")
def short_beauty_slice(
    beauty_slice: tuple[Path, list[Row]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Row]]:
    """The last 240 days of :func:`beauty_slice`: eight 30-day windows, four evaluated (for
    the runs of the TRAIL cascade, which must stay short). Read-only, as it is."""
    return _last_days(beauty_slice[1], 240, tmp_path_factory.mktemp("short"))
