"""Parquet event logs: the same columns as CSV; ids strings or integers, times of any kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streams.eventlog.csvfile import csv_roles
from streams.eventlog.log import DatasetError
from streams.eventlog.validate import Parsed, validate


def read_parquet(path: Path) -> Parsed:
    """Read and validate a Parquet event log; bad rows are numbered from 1."""
    try:
        schema = pq.read_schema(path)
        # pandas may store its index as extra columns; they are not data.
        names = [name for name in schema.names if not name.startswith("__index_level_")]
        roles = csv_roles(path, names)
        table = pq.read_table(path, columns=list(roles.values()))
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    rows = table.num_rows
    parsed, _ = validate(
        table[roles["user_id"]],
        table[roles["item_id"]],
        table[roles["timestamp"]],
        time_label=roles["timestamp"],
        lines=np.arange(1, rows + 1, dtype=np.int64),
        blank=np.zeros(rows, dtype=bool),
        earlier=[],
        earlier_count=0,
    )
    return parsed
