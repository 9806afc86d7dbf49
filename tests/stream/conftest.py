"""Fixtures of the protocol tests: a small real slice of amazon-beauty."""

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
    start = max(ts for _, _, ts in rows) - 420 * DAY
    rows = [r for r in rows if r[2] >= start]
    path = tmp_path_factory.mktemp("beauty") / "slice.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return path, rows
