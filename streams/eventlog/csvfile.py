"""CSV event logs (plain or gzip): the header's columns, and the reader."""

from __future__ import annotations

from pathlib import Path

from streams.eventlog.delimited import read_delimited
from streams.eventlog.log import DatasetError
from streams.eventlog.text import names_shown
from streams.eventlog.validate import Parsed

#: Columns a CSV or Parquet event log may have. ``ts`` is an alias of ``timestamp``.
ALLOWED_COLUMNS = frozenset({"user_id", "item_id", "timestamp", "ts", "type", "weight", "rating"})


def read_csv_log(path: Path, progress: bool) -> Parsed:
    """Parse a CSV event log (``user_id,item_id,timestamp`` header, ``ts`` as an alias)."""
    return read_delimited(path, delimiter=",", quoted=True, roles_of=csv_roles, progress=progress)


def csv_roles(path: Path, names: list[str]) -> dict[str, str]:
    """Map ``user_id``, ``item_id`` and ``timestamp`` to column names of a CSV or Parquet log."""
    unknown = [name for name in names if name not in ALLOWED_COLUMNS]
    if unknown:
        raise DatasetError(
            f"{path}: unknown column(s) {names_shown(unknown)}; "
            f"allowed: {sorted(ALLOWED_COLUMNS)} (ts is an alias of timestamp)"
        )
    if "timestamp" in names and "ts" in names:
        raise DatasetError(f"{path}: has both timestamp and ts; keep one")
    roles = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    if "ts" in names:
        roles["timestamp"] = "ts"
    missing = [role for role, name in roles.items() if name not in names]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing}; the header has {names_shown(names)}"
        )
    return roles
